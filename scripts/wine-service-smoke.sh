#!/usr/bin/env bash
# Smoke test of the Windows service under Wine's real service control manager:
#   service install --start → sc query RUNNING → status through the named pipe → service stop →
#   sc query STOPPED → service uninstall → sc query says the service is gone.
# Usage: scripts/wine-service-smoke.sh path/to/majordomo.exe   (after sourcing windows-env.sh)
# Every wine call has a timeout; the Wine server is killed at the end, whatever happened.
set -uo pipefail
exe=${1:?usage: $0 path/to/majordomo.exe}
: "${WINE:?source ../shared/tools/windows-env.sh first}"
: "${WINE_SHIM_DLL:?source ../shared/tools/windows-env.sh first}"
export WINEDEBUG=${WINEDEBUG:--all}
work=$(mktemp -d)
instance=smoke$$
name=majordomo-$instance
cleanup() {
  timeout 60 "$WINE" "$work/majordomo.exe" service uninstall --instance "$instance" >/dev/null 2>&1 || true
  timeout 30 wineserver -k >/dev/null 2>&1 || true
  # The daemon's own data (lock, logs), which uninstall rightly keeps.
  rm -rf "$work" "${WINEPREFIX:-$HOME/.wine}/drive_c/ProgramData/majordomo/$instance"
  rmdir "${WINEPREFIX:-$HOME/.wine}/drive_c/ProgramData/majordomo" 2>/dev/null || true
}
trap cleanup EXIT
cp "$exe" "$WINE_SHIM_DLL" "$work/"
fail() { echo "wine-service-smoke: FAILED: $*" >&2; exit 1; }
w() { local t=$1; shift; timeout "$t" "$WINE" "$@"; }
state() { w 30 sc query "$name" 2>&1 | tr -d '\r' | awk '/STATE/ {print $4}'; }

# Keep one Wine "boot" for the whole test: a restarted Wine starts auto-start services again.
timeout 30 wineserver -p >/dev/null 2>&1 || true
w 120 wineboot -u >/dev/null 2>&1 || true

echo "-- service install --start"
w 120 "$work/majordomo.exe" service install --instance "$instance" --start || fail "install"
[ "$(state)" = RUNNING ] || fail "sc query after install: $(w 30 sc query "$name" 2>&1)"

echo "-- status through the named pipe"
out=$(w 60 "$work/majordomo.exe" --instance "$instance" --system status --json) || fail "status: $out"
echo "$out" | grep -q "\"instance\":\"$instance\"" || fail "status did not come from the service: $out"
echo "$out" | grep -q "\"socket\":\"[^\"]*pipe[^\"]*$name\"" || fail "status is not over a named pipe: $out"
pid=$(echo "$out" | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
echo "   service answers over \\\\.\\pipe\\$name (pid $pid)"
w 60 "$work/majordomo.exe" service status --instance "$instance" || fail "service status"

echo "-- service stop"
w 120 "$work/majordomo.exe" service stop --instance "$instance" || fail "stop"
[ "$(state)" = STOPPED ] || fail "sc query after stop: $(w 30 sc query "$name" 2>&1)"
exit_code=$(w 30 sc query "$name" 2>&1 | tr -d '\r' | awk '/WIN32_EXIT_CODE/ {print $3}')
[ "$exit_code" = 0 ] || fail "the service stopped with exit code $exit_code"
if w 20 "$work/majordomo.exe" --instance "$instance" --system ping >/dev/null 2>&1; then
  fail "the pipe still answers after stop"
fi

echo "-- service uninstall"
w 120 "$work/majordomo.exe" service uninstall --instance "$instance" || fail "uninstall"
if w 30 sc query "$name" >/dev/null 2>&1; then fail "the service is still registered after uninstall"; fi
echo "wine-service-smoke: OK"
