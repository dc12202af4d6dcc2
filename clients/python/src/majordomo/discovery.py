"""Finding an instance's socket, with the same rules as the `majordomo` CLI.

In order: an explicit socket path; `MAJORDOMO_SOCKET`; else the instance's place
(`--home DIR` / `MAJORDOMO_HOME`, or the system or per-user places of this OS), moved by the
config file's `[paths] socket` (or `MAJORDOMO_PATHS__SOCKET`) when it sets one.

| | socket |
|---|---|
| Linux, system (root) | `/run/majordomo/NAME.sock` |
| Linux, user | `$XDG_RUNTIME_DIR/majordomo/NAME.sock` (else `$XDG_STATE_HOME/majordomo/NAME/NAME.sock`) |
| macOS, system | `/var/run/majordomo/NAME.sock` |
| macOS, user | `~/Library/Application Support/majordomo/NAME/majordomo.sock` |
| Windows, system | pipe `\\\\.\\pipe\\majordomo-NAME` |
| Windows, user | pipe `\\\\.\\pipe\\majordomo-USER-NAME` |
| home DIR | `DIR/NAME/majordomo.sock` (Windows: a pipe named after a hash of `DIR\\NAME`) |
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

DEFAULT_INSTANCE = "default"
_NAME = re.compile(r"^[a-z0-9_-]{1,32}$")


@dataclass(frozen=True)
class Place:
    """Where an instance is: its name, socket (or pipe name), config file, and how it was chosen."""

    instance: str
    socket: str
    config_file: Optional[str]
    mode: str  # "system", "user", "home" or "explicit"


def validate_instance(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(
            f"invalid instance name {name!r}: use 1 to 32 characters from a-z, 0-9, '_' and '-'"
        )


def _is_root() -> bool:
    geteuid = getattr(os, "geteuid", None)
    return bool(geteuid is not None and geteuid() == 0)


def resolve(
    instance: Optional[str] = None,
    *,
    home: Optional[str] = None,
    system: Optional[bool] = None,
    socket: Optional[str] = None,
    config: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    platform: Optional[str] = None,
) -> Place:
    """Where the instance's socket is. `system=None` means: system places for root on Unix, per-user otherwise."""
    env = os.environ if env is None else env
    platform = platform or sys.platform
    name = instance or env.get("MAJORDOMO_INSTANCE") or DEFAULT_INSTANCE
    validate_instance(name)
    explicit = socket or env.get("MAJORDOMO_SOCKET")
    if explicit:
        return Place(name, str(explicit), None, "explicit")
    home = home or env.get("MAJORDOMO_HOME")
    if home:
        mode = "home"
    elif system is None:
        mode = "system" if (not platform.startswith("win") and _is_root()) else "user"
    else:
        mode = "system" if system else "user"
    sock, cfg = _places(name, mode, home, env, platform)
    cfg = config or env.get("MAJORDOMO_CONFIG") or cfg
    moved = env.get("MAJORDOMO_PATHS__SOCKET") or (_config_socket(cfg) if cfg else None)
    return Place(name, moved or sock, cfg, mode)


def _places(name: str, mode: str, home: Optional[str], env: Mapping[str, str], platform: str) -> "tuple[str, Optional[str]]":
    win = platform.startswith("win")
    if mode == "home":
        assert home is not None
        if win:
            root = home.rstrip("\\/") + "\\" + name
            return windows_home_pipe(root, name), root + "\\config.toml"
        root_p = Path(home) / name
        return str(root_p / "majordomo.sock"), str(root_p / "config.toml")
    if win:
        if mode == "system":
            base = (env.get("ProgramData") or r"C:\ProgramData") + "\\majordomo\\" + name
            return rf"\\.\pipe\majordomo-{name}", base + "\\config.toml"
        local = env.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        user = "".join(c.lower() if c.isascii() and c.isalnum() else "_" for c in env.get("USERNAME", "user"))
        return rf"\\.\pipe\majordomo-{user}-{name}", local + "\\majordomo\\" + name + "\\config.toml"
    if platform == "darwin":
        if mode == "system":
            return (
                f"/var/run/majordomo/{name}.sock",
                f"/Library/Application Support/majordomo/{name}.toml",
            )
        lib = Path(env.get("HOME") or str(Path.home())) / "Library/Application Support/majordomo"
        return str(lib / name / "majordomo.sock"), str(lib / f"{name}.toml")
    # Linux and other Unix systems
    if mode == "system":
        return f"/run/majordomo/{name}.sock", f"/etc/majordomo/{name}.toml"
    user_home = env.get("HOME") or str(Path.home())
    config = env.get("XDG_CONFIG_HOME") or os.path.join(user_home, ".config")
    state = env.get("XDG_STATE_HOME") or os.path.join(user_home, ".local", "state")
    runtime = env.get("XDG_RUNTIME_DIR")
    run_dir = os.path.join(runtime, "majordomo") if runtime else os.path.join(state, "majordomo", name)
    return os.path.join(run_dir, f"{name}.sock"), os.path.join(config, "majordomo", f"{name}.toml")


_SECTION = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\"]+)\s*\]\s*(#.*)?$")
_SOCKET = re.compile(r"""^\s*socket\s*=\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)')\s*(#.*)?$""")


def _config_socket(path: str) -> Optional[str]:
    """The `[paths] socket` of a TOML config file, if it sets one (a small scan, not a TOML parser)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    section = ""
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            section = m.group(1).strip('"')
            continue
        if section == "paths":
            s = _SOCKET.match(line)
            if s:
                if s.group(1) is not None:
                    return s.group(1).encode("utf-8").decode("unicode_escape") if "\\" in s.group(1) else s.group(1)
                return s.group(2)
    return None


# --- Windows `--home` pipe names --------------------------------------------------------------
# The daemon derives a pipe name from a hash of the home directory (pipe names are global):
# `\\.\pipe\majordomo-<16 hex>-NAME`, the hash being Rust's `DefaultHasher` (SipHash-1-3, zero
# keys) over `Path::hash`. Reproduced here; `MAJORDOMO_SOCKET` avoids depending on it.

_MASK = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def siphash13(data: bytes, k0: int = 0, k1: int = 0) -> int:
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    def rnd() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _MASK
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _MASK
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _MASK
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _MASK
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        rnd()
        v0 ^= m
    b = ((n & 0xFF) << 56) | int.from_bytes(data[end:] + b"\0" * (8 - (n - end)), "little")
    v3 ^= b
    rnd()
    v0 ^= b
    v2 ^= 0xFF
    rnd()
    rnd()
    rnd()
    return v0 ^ v1 ^ v2 ^ v3


def _rotr2(x: int) -> int:
    return ((x >> 2) | (x << 62)) & _MASK


def rust_path_hash_bytes(path: str, windows: bool) -> bytes:
    """The bytes Rust's `Path::hash` feeds its hasher (a plain or drive-letter path)."""
    raw = path.encode("utf-8")
    out = b""
    seps = b"/\\" if windows else b"/"
    if windows and len(raw) >= 2 and raw[1:2] == b":" and chr(raw[0]).isalpha():
        # Prefix::Disk(letter): the enum discriminant (5) as an isize, then the letter.
        out += (5).to_bytes(8, "little") + bytes([raw[0]]).upper()
        raw = raw[2:]
    start = 0
    hashed = 0
    for i in range(len(raw)):
        if raw[i] in seps:
            if i > start:
                out += raw[start:i]
                hashed = _rotr2((hashed + i - start) & _MASK)
            start = i + 1
            tail = raw[start:]
            if tail == b"." or (len(tail) >= 2 and tail[0:1] == b"." and tail[1] in seps):
                start += 1
    if start < len(raw):
        out += raw[start:]
        hashed = _rotr2((hashed + len(raw) - start) & _MASK)
    return out + hashed.to_bytes(8, "little")


def rust_path_hash(path: str, windows: bool) -> int:
    return siphash13(rust_path_hash_bytes(path, windows))


def windows_home_pipe(root: str, name: str) -> str:
    """The pipe of an instance under `--home` on Windows; `root` is `HOME\\NAME`."""
    return rf"\\.\pipe\majordomo-{rust_path_hash(root, True):016x}-{name}"
