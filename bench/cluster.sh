#!/usr/bin/env bash
# A cluster of three `prepaid serve` nodes on loopback (256 shards in 16
# groups, RocksDB, the defaults' timing), against one node alone, under the
# same `prepaid bench --addr` load: first sent to node 1 (which made the
# cluster and so leads every group: each write is committed by a quorum of
# the three), then to node 2 (which leads none: every request is forwarded
# to node 1 and its answer brought back, one hop). The three nodes and the
# load share the machine's cores. Prints each run's figures and the fsync
# latency before and after. Stops everything it started.
#
#   bench/cluster.sh [--accounts N] [--debits N] [--batch N] [--conns N] [--in-flight N]
set -euo pipefail
cd "$(dirname "$0")/.."

ACCOUNTS=10000
DEBITS=200000
BATCH=1000
CONNS=4
IN_FLIGHT=1
while [ $# -gt 0 ]; do
  case "$1" in
    --accounts) ACCOUNTS=$2; shift 2 ;;
    --debits) DEBITS=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --in-flight) IN_FLIGHT=$2; shift 2 ;;
    *) echo "cluster.sh: unknown flag $1" >&2; exit 2 ;;
  esac
done

bash .ci/setup
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/prepaid-target-release}
cargo build --release --locked --bin prepaid -q
PREPAID=$CARGO_TARGET_DIR/release/prepaid

WORK=$(mktemp -d /tmp/prepaid-cluster.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

fsync() {
  python3 - "$WORK" <<'EOF'
import os, sys, time
p = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
t = []
for _ in range(200):
    a = time.perf_counter(); os.write(fd, b"x" * 4096); os.fdatasync(fd); t.append((time.perf_counter() - a) * 1000)
os.close(fd); os.unlink(p); t.sort()
print("fsync p50 %.2f ms p99 %.2f ms (4 KiB appends + fdatasync, 200 times)" % (t[100], t[197]))
EOF
}

TOKEN="cluster-bench-token-0123456789"
SECRET="cluster-bench-secret-0123456789"
MEMBERS="1=127.0.0.1:17270,2=127.0.0.1:17272,3=127.0.0.1:17274"

# serve NAME GRPC HTTP [VAR=VALUE...]: a node, waited for until it serves.
serve() {
  local name=$1 grpc=$2 http=$3
  shift 3
  env "$@" PREPAID_DATA_DIR="$WORK/$name" PREPAID_TOKENS="bench:admin:$TOKEN" \
    PREPAID_GRPC_ADDR="$grpc" PREPAID_HTTP_ADDR="$http" \
    "$PREPAID" serve --simulated-gateway >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  until grep -q "serving gRPC" "$WORK/$name.log"; do
    kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$WORK/$name.log"; exit 1; }
    sleep 0.1
  done
}

bench() {
  "$PREPAID" bench --addr "$1" --token "$TOKEN" --accounts "$ACCOUNTS" --debits "$DEBITS" \
    --batch "$BATCH" --conns "$CONNS" --in-flight "$IN_FLIGHT" 2>&1 | grep -E "throughput|overloaded|conservation" || true
}

fsync
echo "== one node alone"
serve alone 127.0.0.1:17260 127.0.0.1:17261
bench 127.0.0.1:17260
kill -TERM "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

for id in 1 2 3; do
  serve "node$id" "127.0.0.1:$((17268 + 2 * id))" "127.0.0.1:$((17269 + 2 * id))" \
    PREPAID_CLUSTER_NODE_ID=$id PREPAID_CLUSTER_MEMBERS="$MEMBERS" PREPAID_CLUSTER_SECRET="$SECRET"
done
"$PREPAID" cluster init --http http://127.0.0.1:17271 --token "$TOKEN" >/dev/null
until [ "$("$PREPAID" cluster status --http http://127.0.0.1:17271 --token "$TOKEN" | grep -o '"serving":true' | wc -l)" = 16 ]; do
  sleep 0.1
done
echo "== three nodes, sent to node 1 (leads all 16 groups)"
bench 127.0.0.1:17270
echo "== three nodes, sent to node 2 (leads none: every request forwarded to node 1)"
bench 127.0.0.1:17272
fsync
