#!/usr/bin/env bash
# Smoke test of the Windows service under Wine's real service control manager:
#   service install --start → sc query RUNNING → status through the named pipe → service stop →
#   sc query STOPPED → backup trigger (`check` starts the stopped service through the SCM and
#   records it; its Task Scheduler task exists) → service uninstall → service and task are gone.
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
# A Wine call under a time limit; one that overruns says so (timeout itself is silent).
w() {
  local t=$1 rc=0; shift
  timeout "$t" "$WINE" "$@" || rc=$?
  [ "$rc" -ne 124 ] || echo "wine-service-smoke: \`$*\` did not finish within ${t}s" >&2
  return "$rc"
}
state() { w 30 sc query "$name" 2>&1 | tr -d '\r' | awk '/STATE/ {print $4}'; }

# Keep one Wine "boot" for the whole test: a restarted Wine starts auto-start services again.
timeout 30 wineserver -p >/dev/null 2>&1 || true
w 120 wineboot -u >/dev/null 2>&1 || true

prefix=${WINEPREFIX:-$HOME/.wine}
task_file() { find "$prefix/drive_c/windows/system32" -maxdepth 2 -ipath "*/tasks/majordomo-$instance-check" 2>/dev/null | head -1; }

echo "-- service install --start --with-backup-timer 5m"
w 120 "$work/majordomo.exe" service install --instance "$instance" --start --with-backup-timer 5m || fail "install"
[ -n "$(task_file)" ] || fail "no scheduled task majordomo-$instance-check"
evkey="HKLM\\SYSTEM\\CurrentControlSet\\Services\\EventLog\\Application\\$name"
w 30 reg query "$evkey" /v EventMessageFile >/dev/null 2>&1 || fail "the Event Log source $name is not registered"
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

echo "-- backup trigger: check starts the stopped service through the SCM"
w 120 "$work/majordomo.exe" --instance "$instance" --system check || fail "check"
[ "$(state)" = RUNNING ] || fail "check did not start the service: $(w 30 sc query "$name" 2>&1)"
w 60 "$work/majordomo.exe" --instance "$instance" --system ping >/dev/null || fail "no answer after check"
w 60 "$work/majordomo.exe" --instance "$instance" --system doctor | tr -d '\r' | grep -E '^(OK|WARN) +backup trigger +started the instance 1 time' \
  || fail "doctor does not show the backup trigger's start"
w 120 "$work/majordomo.exe" --instance "$instance" --system check | grep -q answers || fail "second check"

echo "-- service uninstall"
w 240 "$work/majordomo.exe" service uninstall --instance "$instance" || fail "uninstall"
if w 30 sc query "$name" >/dev/null 2>&1; then fail "the service is still registered after uninstall"; fi
[ -z "$(task_file)" ] || fail "the scheduled task is still there after uninstall"
if w 30 reg query "$evkey" >/dev/null 2>&1; then fail "the Event Log source is still registered after uninstall"; fi
echo "wine-service-smoke: OK"
