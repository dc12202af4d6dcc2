#!/usr/bin/env bash
# The exactly-once race of the scheduler (issue 12): a `persistent` job every second; ITER times,
# after a downtime that misses at least one occurrence, the daemon and `majordomo check` (the OS
# backup task) are started at the same moment and both try to catch the job up. Every
# occurrence must run once: the job appends its occurrence to a file, and a line seen twice is a
# failure. Prints the counts; exits 1 on a double run or a downtime nobody caught up.
#   scripts/scheduler-exactly-once.sh [ITER=100]
# Uses $MAJORDOMO_BIN, else target/release/majordomo, else target/debug/majordomo (build one
# first: cargo build --release -p majordomo).
set -euo pipefail
cd "$(dirname "$0")/.."
ITER=${1:-100}
BIN=${MAJORDOMO_BIN:-}
if [ -z "$BIN" ]; then
  for b in target/release/majordomo target/debug/majordomo; do
    if [ -x "$b" ]; then BIN=$PWD/$b; break; fi
  done
fi
[ -n "$BIN" ] || { echo "no majordomo binary: cargo build --release -p majordomo" >&2; exit 2; }
H=$(mktemp -d)
trap 'kill "${DPID:-}" 2>/dev/null || true; rm -rf "$H"' EXIT
for v in $(env | grep -o '^MAJORDOMO_[A-Z_]*' || true); do unset "$v"; done
unset NOTIFY_SOCKET
md() { "$BIN" --home "$H" --instance race "$@"; }
OUT=$H/ran.txt
mkdir -p "$H/race"
cat > "$H/race/config.toml" <<EOF
[monitor]
enabled = false
[http]
enabled = false
[scheduler]
history = 1000
[[job]]
name = "once"
every = "1s"
persistent = true
command = ["sh", "-c", "echo \$MAJORDOMO_JOB_PLANNED >> $OUT"]
EOF
md check >/dev/null 2>&1 || true   # first sight: sets the baseline, runs nothing
started=$(date +%s)
for i in $(seq 1 "$ITER"); do
  sleep 1.05                        # down across at least one occurrence
  md check >/dev/null 2>&1 &
  CPID=$!
  md run >"$H/daemon.log" 2>&1 &
  DPID=$!
  wait "$CPID" || true
  for _ in $(seq 1 200); do md ping >/dev/null 2>&1 && break; sleep 0.05; done
  md shutdown >/dev/null 2>&1 || { echo "iteration $i: shutdown failed; daemon log:" >&2; cat "$H/daemon.log" >&2; exit 1; }
  wait "$DPID" || true
  DPID=
  printf '\r%d/%d' "$i" "$ITER" >&2
done
echo >&2
runs=$(wc -l < "$OUT" 2>/dev/null || echo 0)
distinct=$(sort -u "$OUT" 2>/dev/null | wc -l)
doubled=$((runs - distinct))
rec=$(find "$H" -name once.json | head -1)
count() { grep -o "\"trigger\":\"$1\"" "$rec" | wc -l || true; }
by_check=$(count backup)
by_daemon=$(count catch_up)
retried=$(count retry)
echo "{\"iterations\":$ITER,\"runs\":$runs,\"distinct_occurrences\":$distinct,\"run_twice\":$doubled,\"catch_ups_by_check\":$by_check,\"catch_ups_by_daemon\":$by_daemon,\"retries\":$retried,\"secs\":$(( $(date +%s) - started ))}"
if [ "$doubled" -ne 0 ]; then
  echo "FAIL: $doubled occurrence(s) ran twice:" >&2
  sort "$OUT" | uniq -d >&2
  exit 1
fi
if [ $((by_check + by_daemon)) -lt "$ITER" ]; then
  echo "FAIL: $ITER downtimes but only $((by_check + by_daemon)) catch-ups" >&2
  exit 1
fi
echo "ok: every occurrence ran once"
