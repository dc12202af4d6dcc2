#!/usr/bin/env bash
# Chaos check of the drop-folder pipeline: drop N files while SIGKILLing the daemon KILLS times at
# random moments (and once more while it drains), restarting it each time, against a local HTTP
# sink that records idempotency keys. Prints the counts; exits non-zero if any input was lost or
# uploaded under two different keys.
#   scripts/pipeline-chaos.sh [N=20000] [KILLS=10] [RATE=4000] [SEED=1]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
KILLS=${2:-10}
RATE=${3:-4000}
SEED=${4:-1}
cargo build --release -p majordomo -p majordomo-bench
exec ./target/release/majordomo-bench pipeline --n "$N" --kills "$KILLS" --rate "$RATE" --seed "$SEED"
