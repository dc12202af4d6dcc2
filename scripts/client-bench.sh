#!/usr/bin/env bash
# Benchmarks the client libraries (clients/python, clients/typescript, clients/dotnet) against
# one daemon: bus request/reply round trip p50/p99 (a responder and a requester on two
# connections of the same client, 64-byte payload) and 1→1 publish throughput (64-byte
# payloads, fire-and-forget publishes, until the subscriber has them all), beside the Rust SDK's
# figures from `majordomo-bench bus` (which starts its own daemon with the same config).
# Prints one table (markdown), then one JSON line per client.
#
#   scripts/client-bench.sh            # RTT=2000 N=100000 by default
#   RTT=5000 N=200000 scripts/client-bench.sh
#
# Finds the daemon as MAJORDOMO_BIN, target/release/majordomo, /tmp/majordomo-bin/majordomo,
# target/debug/majordomo or PATH; majordomo-bench beside it (or MAJORDOMO_BENCH_BIN). A client
# whose toolchain is missing (python3, node + npm install, mono + make) is skipped with a note.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RTT=${RTT:-2000}
N=${N:-100000}

find_bin() {
    for b in "${MAJORDOMO_BIN:-}" "$ROOT/target/release/majordomo" /tmp/majordomo-bin/majordomo "$ROOT/target/debug/majordomo" "$(command -v majordomo 2>/dev/null)"; do
        [ -n "$b" ] && [ -x "$b" ] && { echo "$b"; return 0; }
    done
    return 1
}
BIN=$(find_bin) || { echo "client-bench: no daemon binary; build it (cargo build --release -p majordomo) or set MAJORDOMO_BIN" >&2; exit 2; }
BENCH=${MAJORDOMO_BENCH_BIN:-$(dirname "$BIN")/majordomo-bench}
[ -x "$BENCH" ] || BENCH="$ROOT/target/release/majordomo-bench"

HOME_DIR=$(mktemp -d /tmp/md-client-bench.XXXXXX)
mkdir -p "$HOME_DIR/default"
# The same config as `majordomo-bench bus`: queues large enough that nothing is dropped.
cat >"$HOME_DIR/default/config.toml" <<'EOF'
[daemon]
watch_config = false
[log]
file = false
level = "warn"
[control]
max_connections = 30000
[bus]
queue_messages = 1000000
queue_bytes = "256MiB"
EOF
SOCK="$HOME_DIR/default/majordomo.sock"
env -u MAJORDOMO_SOCKET -u MAJORDOMO_HOME -u MAJORDOMO_INSTANCE "$BIN" --home "$HOME_DIR" run >"$HOME_DIR/daemon.log" 2>&1 &
DPID=$!
cleanup() { kill "$DPID" 2>/dev/null; wait "$DPID" 2>/dev/null; rm -rf "$HOME_DIR"; }
trap cleanup EXIT
for _ in $(seq 1 500); do [ -S "$SOCK" ] && break; sleep 0.02; done
[ -S "$SOCK" ] || { echo "client-bench: the daemon did not start:" >&2; cat "$HOME_DIR/daemon.log" >&2; exit 1; }

results=()
notes=()
run() { # run NAME COMMAND...: one JSON line expected on stdout
    local name=$1; shift
    local out
    if out=$("$@" 2>"$HOME_DIR/$name.err" | tail -1) && [ -n "$out" ] && [ "${out:0:1}" = "{" ]; then
        results+=("$out")
    else
        notes+=("$name: failed ($(tail -3 "$HOME_DIR/$name.err" | tr '\n' ' '))")
    fi
}

echo "client-bench: daemon $BIN, $RTT round trips, $N messages per client" >&2

if command -v python3 >/dev/null; then
    run python python3 "$ROOT/clients/python/bench/bench.py" --socket "$SOCK" --rtt "$RTT" --n "$N"
else
    notes+=("python: skipped (no python3)")
fi

if command -v node >/dev/null && [ -d "$ROOT/clients/typescript/node_modules/typescript" ]; then
    if (cd "$ROOT/clients/typescript" && npx tsc -p tsconfig.test.json >/dev/null 2>"$HOME_DIR/tsc.err"); then
        run typescript node "$ROOT/clients/typescript/build/bench/bench.js" --socket "$SOCK" --rtt "$RTT" --n "$N"
    else
        notes+=("typescript: build failed ($(head -3 "$HOME_DIR/tsc.err" | tr '\n' ' '))")
    fi
else
    notes+=("typescript: skipped (needs node and \`npm install\` in clients/typescript)")
fi

if command -v mono >/dev/null && command -v mcs >/dev/null; then
    if make -s -C "$ROOT/clients/dotnet" bench >/dev/null 2>"$HOME_DIR/mcs.err"; then
        run dotnet mono "$ROOT/clients/dotnet/build/Bench.exe" --socket "$SOCK" --rtt "$RTT" --n "$N"
    else
        notes+=("dotnet: build failed ($(head -3 "$HOME_DIR/mcs.err" | tr '\n' ' '))")
    fi
else
    notes+=("dotnet: skipped (needs mono-mcs and mono-runtime)")
fi

rust=""
if [ -x "$BENCH" ]; then
    echo "client-bench: majordomo-bench bus --rtt $RTT --n $N (its own daemon, same config)" >&2
    line=$("$BENCH" bus --rtt "$RTT" --n "$N" --no-nats --conns 100 2>"$HOME_DIR/rust.err" | tail -1)
    if [ "${line:0:1}" = "{" ]; then
        rust=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(json.dumps({"client":"rust-sdk","rtt_p50_us":round(d["bus_sdk_rtt_p50_us"],1),"rtt_p99_us":round(d["bus_sdk_rtt_p99_us"],1),"pub_msgs_per_s":round(d["pub_1to1_sdk_json_msgs_per_s"]),"pub_binary_msgs_per_s":round(d["pub_1to1_msgs_per_s"]),"raw_uds_rtt_p50_us":round(d["raw_uds_rtt_p50_us"],1)}))' "$line")
        results+=("$rust")
    else
        notes+=("rust-sdk: majordomo-bench failed ($(tail -3 "$HOME_DIR/rust.err" | tr '\n' ' '))")
    fi
else
    notes+=("rust-sdk: skipped (no majordomo-bench: cargo build --release -p majordomo-bench, or set MAJORDOMO_BENCH_BIN)")
fi

python3 - "${results[@]}" <<'EOF'
import json, sys
rows = [json.loads(a) for a in sys.argv[1:]]
rust = next((r for r in rows if r["client"] == "rust-sdk"), None)
print("| client | request/reply p50 | p99 | p50 vs Rust SDK | publish 1→1, 64 B | vs Rust SDK (JSON lines) |")
print("|---|---|---|---|---|---|")
for r in rows:
    rel = lambda k: f"{r[k] / rust[k]:.1f} ×" if rust and r is not rust else "1.0 ×" if r is rust else "–"
    name = {"rust-sdk": "Rust SDK (`majordomo-bench bus`, JSON lines)"}.get(r["client"], r["client"])
    print(f"| {name} | {r['rtt_p50_us']:.1f} µs | {r['rtt_p99_us']:.1f} µs | {rel('rtt_p50_us')} | {r['pub_msgs_per_s']:,} msg/s | {rel('pub_msgs_per_s')} |")
if rust:
    print(f"\nRust SDK with the binary framing: {rust['pub_binary_msgs_per_s']:,} msg/s; raw Unix-socket ping-pong p50 {rust['raw_uds_rtt_p50_us']} µs.")
EOF
for n in "${notes[@]}"; do echo "note: $n"; done
for r in "${results[@]}"; do echo "$r"; done
