#!/usr/bin/env bash
# Builds and tests the client libraries in clients/ against a real daemon binary:
#   Python (pytest + mypy), TypeScript (tsc --noEmit + node:test), .NET (Mono mcs + mono).
# Installs what they need (apt: mono-mcs mono-runtime; pip: pytest mypy; npm: typescript,
# @types/node). A suite whose toolchain cannot be installed is SKIPPED, said clearly at the end;
# a test failure makes the script exit non-zero.
#
#   MAJORDOMO_BIN=target/release/majordomo scripts/clients-test.sh
#
# The daemon is MAJORDOMO_BIN, else target/release/majordomo, target/debug/majordomo, PATH.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
C="$ROOT/clients"

if [ -z "${MAJORDOMO_BIN:-}" ]; then
    for b in "$ROOT/target/release/majordomo" "$ROOT/target/debug/majordomo" "$(command -v majordomo 2>/dev/null)"; do
        [ -n "$b" ] && [ -x "$b" ] && { MAJORDOMO_BIN=$b; break; }
    done
fi
if [ -z "${MAJORDOMO_BIN:-}" ] || [ ! -x "$MAJORDOMO_BIN" ]; then
    echo "clients-test: no daemon binary: build it (cargo build -p majordomo) or set MAJORDOMO_BIN" >&2
    exit 1
fi
# The suites run in their own folders: an absolute path.
MAJORDOMO_BIN=$(cd "$(dirname "$MAJORDOMO_BIN")" && pwd)/$(basename "$MAJORDOMO_BIN")
export MAJORDOMO_BIN
export MAJORDOMO_REQUIRE_DAEMON=1 # the daemon tests fail rather than skip
echo "clients-test: daemon $MAJORDOMO_BIN"

skipped=()
failed=()
passed=()

# --- installs -------------------------------------------------------------------------------
if ! command -v mcs >/dev/null || ! command -v mono >/dev/null; then
    if command -v apt-get >/dev/null; then
        echo "clients-test: installing mono-mcs mono-runtime (apt)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mono-mcs mono-runtime make) >/tmp/clients-test-apt.log 2>&1 \
            || echo "clients-test: apt-get failed (see /tmp/clients-test-apt.log)"
    fi
fi
py_ok=1
if ! python3 -c 'import pytest, mypy' 2>/dev/null; then
    echo "clients-test: installing pytest mypy (pip)"
    python3 -m pip install -q pytest mypy >/tmp/clients-test-pip.log 2>&1 \
        || python3 -m pip install -q --break-system-packages pytest mypy >>/tmp/clients-test-pip.log 2>&1 \
        || true
    python3 -c 'import pytest, mypy' 2>/dev/null || py_ok=0
fi
ts_ok=1
if command -v npm >/dev/null && command -v node >/dev/null; then
    if [ ! -x "$C/typescript/node_modules/.bin/tsc" ]; then
        echo "clients-test: installing typescript @types/node (npm)"
        (cd "$C/typescript" && npm install --no-audit --no-fund --silent) >/tmp/clients-test-npm.log 2>&1 || true
    fi
    [ -x "$C/typescript/node_modules/.bin/tsc" ] || ts_ok=0
else
    ts_ok=0
fi

# --- suites -----------------------------------------------------------------------------------
suite() { # suite NAME COMMAND...
    local name=$1; shift
    echo
    echo "=== $name: $*"
    local t0=$SECONDS
    if "$@"; then passed+=("$name ($((SECONDS - t0)) s)"); else failed+=("$name"); fi
}

if [ "$py_ok" = 1 ]; then
    suite "python mypy" bash -c "cd '$C/python' && python3 -m mypy"
    suite "python pytest" bash -c "cd '$C/python' && python3 -m pytest -q -p no:cacheprovider"
else
    skipped+=("python: pytest/mypy could not be installed (see /tmp/clients-test-pip.log)")
fi

if [ "$ts_ok" = 1 ]; then
    suite "typescript tsc --noEmit" bash -c "cd '$C/typescript' && npx tsc --noEmit -p tsconfig.test.json"
    suite "typescript npm test" bash -c "cd '$C/typescript' && npm test --silent"
else
    skipped+=("typescript: node/npm or the npm packages typescript, @types/node are missing (see /tmp/clients-test-npm.log)")
fi

if command -v mcs >/dev/null && command -v mono >/dev/null && command -v make >/dev/null; then
    suite "dotnet make test (mono)" make -s -C "$C/dotnet" test
else
    skipped+=("dotnet: mono-mcs/mono-runtime could not be installed (see /tmp/clients-test-apt.log)")
fi

echo
echo "=== clients-test summary"
for p in "${passed[@]}"; do echo "passed:  $p"; done
for s in "${skipped[@]}"; do echo "SKIPPED: $s"; done
for f in "${failed[@]}"; do echo "FAILED:  $f"; done
[ "${#failed[@]}" -eq 0 ]
