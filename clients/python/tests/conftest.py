"""Starts real daemons for the tests: `MAJORDOMO_BIN` (a path) or `majordomo` on PATH, each in
a temporary `--home`. Without a binary the daemon tests are skipped, unless
`MAJORDOMO_REQUIRE_DAEMON=1` (CI), which makes them fail."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

HERE = Path(__file__).resolve().parent
TESTDATA = HERE.parent.parent / "testdata"


def daemon_bin() -> Optional[str]:
    b = os.environ.get("MAJORDOMO_BIN")
    if b:
        if not os.access(b, os.X_OK):
            pytest.fail(f"MAJORDOMO_BIN={b} is not an executable file")
        return b
    return shutil.which("majordomo")


class Daemon:
    """One `majordomo --home DIR --instance NAME run`."""

    def __init__(self, binary: str, home: str, instance: str = "default", config: Optional[str] = None) -> None:
        self.binary = binary
        self.home = home
        self.instance = instance
        self.dir = Path(home) / instance
        self.dir.mkdir(parents=True, exist_ok=True)
        text = config if config is not None else (TESTDATA / "config.toml").read_text()
        (self.dir / "config.toml").write_text(text)
        self.socket = str(self.dir / "majordomo.sock")
        self.proc: Optional["subprocess.Popen[bytes]"] = None

    def start(self, wait: float = 15.0) -> "Daemon":
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAJORDOMO_")}
        self.log = open(self.dir / "daemon.out", "ab")
        self.proc = subprocess.Popen(
            [self.binary, "--home", self.home, "--instance", self.instance, "run"],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + wait
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}: {self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not create {self.socket} within {wait} s: {self.output()}")
            time.sleep(0.02)
        return self

    def output(self) -> str:
        try:
            return (self.dir / "daemon.out").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.log.close()


@pytest.fixture(scope="session")
def binary() -> str:
    b = daemon_bin()
    if b is None:
        msg = "no daemon binary: set MAJORDOMO_BIN=/path/to/majordomo or put majordomo on PATH"
        if os.environ.get("MAJORDOMO_REQUIRE_DAEMON") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return b


@pytest.fixture(scope="session")
def home() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="md-py-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def daemon(binary: str, home: str) -> Iterator[Daemon]:
    d = Daemon(binary, home).start()
    yield d
    d.stop()


@pytest.fixture()
def spawn(binary: str, home: str) -> Iterator["Spawner"]:
    s = Spawner(binary, home)
    yield s
    for d in s.started:
        d.stop(signal.SIGKILL)


class Spawner:
    """Starts extra daemons (other instances) for one test."""

    def __init__(self, binary: str, home: str) -> None:
        self.binary = binary
        self.home = home
        self.started: List[Daemon] = []

    def __call__(self, instance: str, config: Optional[str] = None) -> Daemon:
        d = Daemon(self.binary, self.home, instance, config).start()
        self.started.append(d)
        return d
