#!/usr/bin/env bash
# A cluster of three `prepaid serve` nodes on loopback (256 shards in 16
# groups, RocksDB, the defaults' timing), against one node alone, under the
# same `prepaid bench --addr` load. First with the lead left where the
# elections put it (cluster.balance_leaders = false): sent to node 1 (which
# made the cluster and so leads every group: each write is committed by a
# quorum of the three), then to node 2 (which leads none: every request is
# forwarded to node 1 and its answer brought back, one hop). Then a new
# cluster with the defaults, the lead spread (6, 5 and 5 groups): the load
# through node 1, then through ClusterClient (`--addr` of all three: each
# batch split by leader, nothing forwarded), then three loads at once, one
# through each node (each forwards what it does not lead). The three nodes and the load share the machine's cores. Prints
# each run's figures and the fsync latency before and after. Stops
# everything it started.
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
  python3 bench/fsync.py "$WORK"
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

# serving HTTP_PORT: how many groups that node serves now.
serving() {
  "$PREPAID" cluster status --http "http://127.0.0.1:$1" --token "$TOKEN" | grep -o '"serving":true' | wc -l
}

# cluster NAME BALANCE "N1 N2 N3": three nodes in WORK/NAMEn, made a
# cluster, once nodes 1, 2 and 3 serve N1, N2 and N3 groups.
cluster() {
  local name=$1 balance=$2 want=$3
  for id in 1 2 3; do
    serve "$name$id" "127.0.0.1:$((17268 + 2 * id))" "127.0.0.1:$((17269 + 2 * id))" \
      PREPAID_CLUSTER_NODE_ID=$id PREPAID_CLUSTER_MEMBERS="$MEMBERS" PREPAID_CLUSTER_SECRET="$SECRET" \
      PREPAID_CLUSTER_BALANCE_LEADERS="$balance"
  done
  "$PREPAID" cluster init --http http://127.0.0.1:17271 --token "$TOKEN" >/dev/null
  until [ "$(serving 17271) $(serving 17273) $(serving 17275)" = "$want" ]; do
    sleep 0.1
  done
}

stop_cluster() {
  for p in "${PIDS[@]: -3}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]: -3}"; do wait "$p" 2>/dev/null || true; done
}

cluster node false "16 0 0"
echo "== three nodes, sent to node 1 (leads all 16 groups)"
bench 127.0.0.1:17270
echo "== three nodes, sent to node 2 (leads none: every request forwarded to node 1)"
bench 127.0.0.1:17272
stop_cluster

# The defaults: node 1 hands nodes 2 and 3 their groups once it serves all.
cluster spread true "6 5 5"
echo "== three nodes, the lead spread (6/5/5 groups), sent to node 1 (10 of 16 groups forwarded)"
bench 127.0.0.1:17270
echo "== three nodes, the lead spread (6/5/5 groups), through ClusterClient (each batch split by leader)"
bench 127.0.0.1:17270,127.0.0.1:17272,127.0.0.1:17274
echo "== three nodes, the lead spread (6/5/5 groups), a load through each node at once"
LOADS=()
for port in 17270 17272 17274; do
  bench "127.0.0.1:$port" | sed "s/^/  via :$port  /" &
  LOADS+=($!)
done
for p in "${LOADS[@]}"; do wait "$p"; done
fsync
