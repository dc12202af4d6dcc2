from __future__ import annotations

from pathlib import Path

import pytest

from majordomo.discovery import resolve, rust_path_hash, windows_home_pipe


def test_explicit_socket_and_environment_win() -> None:
    assert resolve("x", socket="/s", env={"MAJORDOMO_SOCKET": "/e"}).socket == "/s"
    p = resolve("x", env={"MAJORDOMO_SOCKET": "/e", "MAJORDOMO_HOME": "/h"})
    assert (p.socket, p.mode) == ("/e", "explicit")


def test_home_places() -> None:
    p = resolve("web", home="/srv/md", env={}, platform="linux")
    assert p.socket == "/srv/md/web/majordomo.sock"
    assert p.config_file == "/srv/md/web/config.toml"
    assert resolve(env={"MAJORDOMO_HOME": "/h", "MAJORDOMO_INSTANCE": "a"}, platform="linux").socket == "/h/a/majordomo.sock"


def test_linux_user_and_system_places() -> None:
    env = {"HOME": "/home/u", "XDG_RUNTIME_DIR": "/run/user/1000"}
    assert resolve("a", system=False, env=env, platform="linux").socket == "/run/user/1000/majordomo/a.sock"
    no_runtime = {"HOME": "/home/u"}
    assert resolve("a", system=False, env=no_runtime, platform="linux").socket == "/home/u/.local/state/majordomo/a/a.sock"
    assert resolve("a", system=True, env=env, platform="linux").socket == "/run/majordomo/a.sock"
    assert resolve("a", system=True, env=env, platform="linux").config_file == "/etc/majordomo/a.toml"


def test_macos_places() -> None:
    env = {"HOME": "/Users/u"}
    assert resolve("a", system=False, env=env, platform="darwin").socket == "/Users/u/Library/Application Support/majordomo/a/majordomo.sock"
    assert resolve("a", system=True, env=env, platform="darwin").socket == "/var/run/majordomo/a.sock"


def test_windows_pipes() -> None:
    assert resolve("a", system=True, env={}, platform="win32").socket == r"\\.\pipe\majordomo-a"
    assert resolve("a", system=False, env={"USERNAME": "Jo Doe", "LOCALAPPDATA": r"C:\L"}, platform="win32").socket == r"\\.\pipe\majordomo-jo_doe-a"
    home = resolve("a", home=r"C:\md", env={}, platform="win32").socket
    assert home == windows_home_pipe(r"C:\md\a", "a")
    assert home.startswith(r"\\.\pipe\majordomo-") and home.endswith("-a")


def test_path_hash_matches_rust() -> None:
    # DefaultHasher over Path::hash, printed by rustc 1.95 on Linux.
    vectors = {
        "/tmp/h/default": 0x157B836CD32B57DC,
        "/a/./b//c/": 0xDA512403DE630C20,
        "rel/x": 0xE810B6C342514487,
        "/tmp/majordomo-test-ü/inst_1": 0xD27C8E172B47749C,
        "/": 0xBD60ACB658C79E45,
    }
    for path, want in vectors.items():
        assert rust_path_hash(path, windows=False) == want, path
    # Windows separators are interchangeable.
    assert rust_path_hash(r"C:\a\b", True) == rust_path_hash("C:/a/b", True)


def test_config_file_moves_the_socket(tmp_path: Path) -> None:
    d = tmp_path / "i"
    d.mkdir()
    (d / "config.toml").write_text('[log]\nlevel = "info"\n[paths]\n# moved\nsocket = "/var/tmp/moved.sock"  # here\n[bus]\n')
    assert resolve("i", home=str(tmp_path), env={}, platform="linux").socket == "/var/tmp/moved.sock"
    env = {"MAJORDOMO_PATHS__SOCKET": "/e.sock"}
    assert resolve("i", home=str(tmp_path), env=env, platform="linux").socket == "/e.sock"


def test_bad_instance_name() -> None:
    with pytest.raises(ValueError, match="invalid instance name"):
        resolve("Bad Name", env={})
