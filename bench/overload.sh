#!/usr/bin/env bash
# Overload figures for docs/RELIABILITY.md: a release `prepaid serve` with a
# node-wide in-flight bound, measured at its peak, then offered ten times
# that rate (open loop), then ordinary load again.
#
#   bash bench/overload.sh [MAX_IN_FLIGHT] [SECONDS]
#
# With PIN=1 the server runs on CPU 0 and the load generator on CPU 1
# (taskset), so the generator's work at ten times the load does not come
# out of the server's share of a small machine.
#
# Prints, for each phase, the `prepaid bench --addr --json` line, and the
# server's peak resident memory. Uses the release build in
# $CARGO_TARGET_DIR (default /var/cache/prepaid-target-release).
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_IN_FLIGHT=${1:-4000}
SECONDS_EACH=${2:-10}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/prepaid-target-release}
cargo build --release --bin prepaid >&2
BIN="$CARGO_TARGET_DIR/release/prepaid"
DIR=$(mktemp -d)
TOKEN=overload-token-0123456789
SERVER_CPU=() BENCH_CPU=()
if [ "${PIN:-0}" = 1 ]; then SERVER_CPU=(taskset -c 0) BENCH_CPU=(taskset -c 1); fi
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$DIR"' EXIT
printf '[node]\nmax_in_flight = %s\n' "$MAX_IN_FLIGHT" >"$DIR/overload.toml"
PREPAID_DATA_DIR="$DIR/data" PREPAID_GRPC_ADDR=127.0.0.1:17170 PREPAID_HTTP_ADDR=127.0.0.1:17171 \
  PREPAID_TOKENS="bench:admin:$TOKEN" "${SERVER_CPU[@]}" "$BIN" serve --simulated-gateway --config "$DIR/overload.toml" >"$DIR/serve.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do grep -q serving "$DIR/serve.log" && break; sleep 0.1; done
bench() { "${BENCH_CPU[@]}" "$BIN" bench --addr 127.0.0.1:17170 --token "$TOKEN" --accounts 10000 --json "$@" | tail -1; }
rss() { awk '/VmHWM/ {print $2 " kB"}' "/proc/$PID/status"; }

echo "max_in_flight $MAX_IN_FLIGHT"
# Peak: closed loop, 2 connections × 2 callers × batches of 1,000 — 4,000
# requests in flight: the script's default bound, reached and not passed.
calm=$(bench --debits 300000 --conns 2 --batch 1000)
echo "peak (closed loop, 2 connections, batches of 1000): $calm"
peak=$(echo "$calm" | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["accepted_per_s"]))')
echo "peak RSS after peak load: $(rss)"
rate=$((peak * 10))
storm=$(bench --debits $((rate * SECONDS_EACH)) --conns 16 --batch 1000 --rate "$rate")
echo "10x peak offered ($rate/s, open loop, 16 connections): $storm"
echo "peak RSS after overload: $(rss)"
after=$(bench --debits 200000 --conns 2 --batch 1000)
echo "after the overload: $after"
