"""The typed layer matches schema/: regenerating changes nothing, and every command is a method."""
from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import majordomo
from majordomo import _generated, sync

ROOT = Path(__file__).resolve().parents[3]


def test_generated_code_matches_schema() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "clients/gen_types.py"), "--check"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def test_every_command_of_the_schema_is_a_typed_method() -> None:
    index = json.loads((ROOT / "schema/index.json").read_text())
    names = {c["name"] for c in index["commands"]}
    assert names == set(_generated.COMMANDS), "run python3 clients/gen_types.py"
    assert index["protocol"] == majordomo.PROTOCOL
    for c in index["commands"]:
        meth = _generated.COMMANDS[c["name"]]["method"]
        for cls in (majordomo.Client, sync.Client):
            fn = getattr(cls, meth, None)
            assert fn is not None, f"{cls.__name__} lacks {meth} for {c['name']}"
        schema = json.loads((ROOT / "schema" / c["file"]).read_text())
        params = inspect.signature(getattr(majordomo.Client, meth)).parameters
        props = set(schema["args"].get("properties", {}))
        got = {p.rstrip("_") for p in params if p not in ("self", "timeout")}
        assert got == props, f"{c['name']}: parameters {got} != schema properties {props}"
        for req in schema["args"].get("required", []):
            p = params.get(req) or params[req + "_"]
            assert p.default is inspect.Parameter.empty, f"{c['name']}: {req} is required"
