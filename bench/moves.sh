#!/usr/bin/env bash
# What a planned move of a group member costs the requests of its group:
# four `prepaid serve` nodes on loopback (release build, RocksDB, 256
# shards in 16 groups of 3 voters, the defaults' timing) under a load of
# single debits through ClusterClient (`prepaid bench --addr` of all four,
# --batch 1, 16 in flight per connection). First the load alone (its
# slowest request is the baseline), then the same load while MOVES group
# members are moved one after the other (`prepaid cluster move-shard`),
# each taken from the node that leads the group (the worst case: the lead
# is handed off first) to a node that holds none of it. First, each node's
# CPU and memory idle for 10 s (the groups' and the controller's cost over
# the real link). Prints each load's
# figures (its slowest request is the longest a request waited through a
# move, retries included), each move's time from the request to the map
# saying it is done, the mover's own time (catch-up included) from the
# nodes' logs, and the fsync latency before and after. Stops everything it
# started.
#
#   bench/moves.sh [--moves N] [--debits N] [--accounts N]
set -euo pipefail
cd "$(dirname "$0")/.."

MOVES=6
DEBITS=80000
ACCOUNTS=2000
while [ $# -gt 0 ]; do
  case "$1" in
    --moves) MOVES=$2; shift 2 ;;
    --debits) DEBITS=$2; shift 2 ;;
    --accounts) ACCOUNTS=$2; shift 2 ;;
    *) echo "moves.sh: unknown flag $1" >&2; exit 2 ;;
  esac
done

bash .ci/setup
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/prepaid-target-release}
cargo build --release --locked --bin prepaid -q
PREPAID=$CARGO_TARGET_DIR/release/prepaid

WORK=$(mktemp -d /tmp/prepaid-moves.XXXXXX)
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

TOKEN="moves-bench-token-0123456789"
SECRET="moves-bench-secret-0123456789"
MEMBERS="1=127.0.0.1:17370,2=127.0.0.1:17372,3=127.0.0.1:17374,4=127.0.0.1:17376"
ADDRS="127.0.0.1:17370,127.0.0.1:17372,127.0.0.1:17374,127.0.0.1:17376"

for id in 1 2 3 4; do
  env PREPAID_DATA_DIR="$WORK/node$id" PREPAID_TOKENS="bench:admin:$TOKEN" \
    PREPAID_GRPC_ADDR="127.0.0.1:$((17368 + 2 * id))" PREPAID_HTTP_ADDR="127.0.0.1:$((17369 + 2 * id))" \
    PREPAID_CLUSTER_NODE_ID=$id PREPAID_CLUSTER_MEMBERS="$MEMBERS" PREPAID_CLUSTER_SECRET="$SECRET" \
    RUST_LOG=prepaid=info "$PREPAID" serve --simulated-gateway >"$WORK/node$id.log" 2>&1 &
  PIDS+=($!)
  until grep -q "serving gRPC" "$WORK/node$id.log"; do
    kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$WORK/node$id.log"; exit 1; }
    sleep 0.1
  done
done
"$PREPAID" cluster init --http http://127.0.0.1:17371 --token "$TOKEN" >/dev/null

status() { "$PREPAID" cluster status --http http://127.0.0.1:17371 --token "$TOKEN"; }
# Every group led (as node 1 sees it, the map's hints for the groups it
# holds none of).
until status | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if all(g["leader"] for g in s["groups"]) else 1)'; do
  sleep 0.2
done
sleep 3

# idle SECONDS: each node's CPU (user + system, in cores) and resident
# memory over SECONDS with no load: the cost of its groups' heartbeats and
# of the controller.
idle() {
  python3 - "$1" "${PIDS[@]}" <<'PY'
import os, sys, time
secs, pids = float(sys.argv[1]), sys.argv[2:]
tick = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick
before = {p: cpu(p) for p in pids}
time.sleep(secs)
for n, p in enumerate(pids, 1):
    rss = [l for l in open(f"/proc/{p}/status") if l.startswith("VmRSS")][0].split()[1]
    print(f"  node {n}: {(cpu(p) - before[p]) / secs:.3f} cores idle, rss {int(rss) // 1024} MiB")
PY
}

bench() {
  "$PREPAID" bench --addr "$ADDRS" --token "$TOKEN" --accounts "$ACCOUNTS" --debits "$DEBITS" \
    --batch 1 --conns 2 --in-flight 16 2>&1 | tr "\r" "\n" | grep -vE "^ *[0-9]+% " | grep -v "^$" || true
}

fsync
echo "== idle for 10 s (each node: 12 of the 16 groups' members, a member of the controller; 100 ms heartbeats)"
idle 10
echo "== the load alone (four nodes, 16 groups of 3)"
bench

echo "== the same load while $MOVES group members move, each from its group's leader"
bench &
LOAD=$!
sleep 2
for g in $(seq 0 $((MOVES - 1))); do
  read -r FROM TO < <(status | python3 -c "
import json, sys
s = json.load(sys.stdin); g = s['groups'][$g]
nodes = [n['node'] for n in s['map']['nodes']]
print(g['leader'], [n for n in nodes if n not in g['voters']][0])")
  START=$(date +%s%N)
  "$PREPAID" cluster move-shard --group "$g" --from "$FROM" --to "$TO" --http http://127.0.0.1:17373 --token "$TOKEN" >/dev/null
  until status | python3 -c "
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if not s['map']['planned'] and $TO in s['groups'][$g]['voters'] else 1)"; do
    sleep 0.02
  done
  echo "  group $g: from node $FROM (its leader) to node $TO: done in $(( ($(date +%s%N) - START) / 1000000 )) ms"
  sleep 1
done
wait "$LOAD"
echo "  the mover's own times (the request to the group's leader, catch-up included):"
grep -h '"moved"\|moved' "$WORK"/node*.log | grep -o 'took_ms=[0-9]*' | sed 's/^/    /' || true
echo "  each moved group unserved (its old leader stops serving it, to the next serving it, from the nodes' logs):"
python3 bench/unserved.py "$WORK" "$MOVES"
fsync
