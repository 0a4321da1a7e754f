#!/usr/bin/env bash
# Restart time with many accounts on disk and a log tail to replay: an
# embedded bench funds N accounts and debits them in batches of 1,000 until
# it is killed with SIGKILL partway (so its log tail is left, never
# checkpointed at a clean stop), then `prepaid serve` starts on the data dir
# and the time from its start to the first request it serves is taken (a
# CLI read, polled every 10 ms: an upper bound). Prints what the store
# replayed (its "store opened" log line). Stops everything it started.
#
#   bench/restart.sh [--accounts N] [--kill-after SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."

ACCOUNTS=1000000
KILL_AFTER=5
while [ $# -gt 0 ]; do
  case "$1" in
    --accounts) ACCOUNTS=$2; shift 2 ;;
    --kill-after) KILL_AFTER=$2; shift 2 ;;
    *) echo "restart.sh: unknown flag $1" >&2; exit 2 ;;
  esac
done

bash .ci/setup
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/prepaid-target-release}
cargo build --release --locked --bin prepaid -q
PREPAID=$CARGO_TARGET_DIR/release/prepaid

WORK=$(mktemp -d /tmp/prepaid-restart.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Load until killed: more debits than it can do before the kill.
"$PREPAID" bench --embedded --accounts "$ACCOUNTS" --debits 1000000000 --batch 1000 --callers 16 \
  --data-dir "$WORK/data" >"$WORK/bench.out" 2>"$WORK/bench.err" &
PIDS+=($!)
BENCH=$!
echo "funding $ACCOUNTS accounts..."
until grep -q "callers, batch" "$WORK/bench.err"; do
  kill -0 "$BENCH" 2>/dev/null || { cat "$WORK/bench.err"; exit 1; }
  sleep 0.5
done
echo "debiting; SIGKILL in $KILL_AFTER s"
sleep "$KILL_AFTER"
kill -9 "$BENCH"
wait "$BENCH" 2>/dev/null || true
du -sh "$WORK/data" | awk '{print "data dir: " $1}'

TOKEN="restart-token-0123456789"
start=$(date +%s%N)
RUST_LOG=info PREPAID_DATA_DIR="$WORK/data" PREPAID_TOKENS="bench:admin:$TOKEN" \
  PREPAID_GRPC_ADDR=127.0.0.1:17170 PREPAID_HTTP_ADDR=127.0.0.1:17171 \
  "$PREPAID" serve --simulated-gateway >"$WORK/serve.log" 2>&1 &
PIDS+=($!)
SERVE=$!
until "$PREPAID" account show --account acct_00000000 --addr 127.0.0.1:17170 --token "$TOKEN" >/dev/null 2>&1; do
  kill -0 "$SERVE" 2>/dev/null || { cat "$WORK/serve.log"; exit 1; }
  sleep 0.01
done
end=$(date +%s%N)
echo "first request served $(((end - start) / 1000000)) ms after prepaid serve started ($ACCOUNTS accounts on disk)"
grep -E "store opened|node started|serving" "$WORK/serve.log" | cut -c1-220 || true
kill -TERM "$SERVE"
wait "$SERVE" 2>/dev/null || true
