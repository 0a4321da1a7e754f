#!/usr/bin/env bash
# The same authorization workload — strict debits of 1..100 µ$ against funded
# accounts, refused when the balance would go below zero — on Redis (a Lua
# script via EVALSHA, appendfsync everysec and always), PostgreSQL
# (UPDATE … WHERE balance >= amount, synchronous_commit off and on) and
# prepaid served (async and sync durability), in one run, on loopback ports
# of its own, in three shapes:
#
#   single     CONNS connections, one call in flight on each
#              (redis-benchmark -P 1, pgbench, prepaid bench --in-flight 1)
#   pipelined  CONNS connections, 32 calls in flight on each
#              (redis-benchmark -P 32, prepaid bench --in-flight 32)
#   batch      4 connections, 1,000 debits per call
#              (redis-benchmark -P 1000, prepaid bench --batch 1000)
#
# Prints one table with every shape's ratios to prepaid sync in that shape.
# Installs what is missing (Debian packages), stops everything it started.
#
#   bench/compare.sh [--accounts N] [--seconds S] [--conns N] [--shapes single,pipelined,batch]
#
# Needs root or sudo for apt-get and to run PostgreSQL as its own user.
set -euo pipefail
cd "$(dirname "$0")/.."

ACCOUNTS=10000
SECONDS_EACH=10
CONNS=64
SHAPES=single,pipelined,batch
while [ $# -gt 0 ]; do
  case "$1" in
    --accounts) ACCOUNTS=$2; shift 2 ;;
    --seconds) SECONDS_EACH=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --shapes) SHAPES=$2; shift 2 ;;
    *) echo "compare.sh: unknown flag $1" >&2; exit 2 ;;
  esac
done
for shape in ${SHAPES//,/ }; do
  case "$shape" in
    single|pipelined|batch) ;;
    *) echo "compare.sh: unknown shape $shape (single, pipelined, batch)" >&2; exit 2 ;;
  esac
done
has_shape() { [[ ",$SHAPES," == *",$1,"* ]]; }
# Per shape: connections, Redis pipeline depth, prepaid flags, and how many
# debits make about SECONDS_EACH seconds (from the rates measured here).
shape_conns() { case "$1" in batch) echo 4 ;; *) echo "$CONNS" ;; esac; }
shape_pipeline() { case "$1" in single) echo 1 ;; pipelined) echo 32 ;; batch) echo 1000 ;; esac; }
shape_prepaid() {
  case "$1" in
    single) echo "--in-flight 1" ;;
    pipelined) echo "--in-flight 32" ;;
    batch) echo "--batch 1000" ;;
  esac
}
shape_rate() { case "$1" in single) echo 20000 ;; pipelined) echo 60000 ;; batch) echo 200000 ;; esac; }
shape_redis_rate() { case "$1" in single) echo 30000 ;; pipelined) echo 95000 ;; batch) echo 150000 ;; esac; }

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v pgbench >/dev/null || need+=(postgresql-contrib)
if [ "${#need[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
bash .ci/setup
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/prepaid-target-release}
cargo build --release --locked --bin prepaid -q
PREPAID=$CARGO_TARGET_DIR/release/prepaid

WORK=$(mktemp -d /tmp/prepaid-compare.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "${PGBIN:-}" ] && [ -d "$WORK/pg" ]; then
    $SUDO runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -m fast stop >/dev/null 2>&1 || true
  fi
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

RESULTS="$WORK/results.txt"
: > "$RESULTS"
# shape, system, debits/s
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$RESULTS"; }

# --- Redis -------------------------------------------------------------
REDIS_PORT=16379
SCRIPT='local b = tonumber(redis.call("GET", KEYS[1]) or "0")
local a = tonumber(ARGV[1])
if b >= a then return redis.call("DECRBY", KEYS[1], a) else return -1 end'
for mode in everysec always; do
  mkdir -p "$WORK/redis-$mode"
  redis-server --port $REDIS_PORT --bind 127.0.0.1 --dir "$WORK/redis-$mode" --save "" \
    --appendonly yes --appendfsync "$mode" --daemonize no >/dev/null &
  PIDS+=($!)
  for _ in $(seq 50); do redis-cli -p $REDIS_PORT ping >/dev/null 2>&1 && break; sleep 0.1; done
  # Balances in µ$ (integers): 1,000,000 $ each.
  for i in $(seq 0 $((ACCOUNTS - 1))); do echo "SET acct:$(printf '%012d' "$i") 1000000000000"; done \
    | redis-cli -p $REDIS_PORT --pipe >/dev/null
  SHA=$(redis-cli -p $REDIS_PORT SCRIPT LOAD "$SCRIPT")
  for shape in ${SHAPES//,/ }; do
    n=$((SECONDS_EACH * $(shape_redis_rate "$shape")))
    out=$(redis-benchmark -p $REDIS_PORT -c "$(shape_conns "$shape")" -n "$n" -r "$ACCOUNTS" \
      -P "$(shape_pipeline "$shape")" -q \
      EVALSHA "$SHA" 1 "acct:__rand_int__" 50 2>/dev/null | tr '\r' '\n' | grep -E 'requests per second' | tail -1)
    rps=$(echo "$out" | grep -oE '[0-9.]+ requests per second' | awk '{print $1}')
    record "$shape" "redis lua appendfsync=$mode" "${rps:-0}"
  done
  kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
done

# --- PostgreSQL (one statement per round trip: the single shape) -------
if has_shape single; then
  PGBIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | tail -1)")
  PG_PORT=15432
  $SUDO chown postgres "$WORK" 2>/dev/null || true
  $SUDO runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg" -A trust >/dev/null
  $SUDO runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -o "-p $PG_PORT -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=512MB" -l "$WORK/pg.log" start >/dev/null
  PSQL=(psql -h 127.0.0.1 -p $PG_PORT -U postgres -q)
  "${PSQL[@]}" -c "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)"
  "${PSQL[@]}" -c "INSERT INTO accounts SELECT g, 1000000000000 FROM generate_series(1, $ACCOUNTS) g"
  cat > "$WORK/debit.sql" <<SQL
\set id random(1, $ACCOUNTS)
\set amount random(1, 100)
UPDATE accounts SET balance = balance - :amount WHERE id = :id AND balance >= :amount;
SQL
  for sc in off on; do
    out=$(PGOPTIONS="-c synchronous_commit=$sc" pgbench -h 127.0.0.1 -p $PG_PORT -U postgres -n -c "$CONNS" -j 2 \
      -T "$SECONDS_EACH" -f "$WORK/debit.sql" postgres 2>/dev/null | grep -E '^tps' | head -1)
    tps=$(echo "$out" | grep -oE '[0-9]+\.[0-9]+' | head -1)
    record single "postgresql update synchronous_commit=$sc" "${tps:-0}"
  done
  $SUDO runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -m fast stop >/dev/null
fi

# --- prepaid -----------------------------------------------------------
TOKEN="compare-token-0123456789"
for durability in async sync; do
  PREPAID_DATA_DIR="$WORK/prepaid-$durability" PREPAID_DURABILITY=$durability \
    PREPAID_GRPC_ADDR=127.0.0.1:17070 PREPAID_HTTP_ADDR=127.0.0.1:17071 PREPAID_TOKENS="bench:admin:$TOKEN" \
    "$PREPAID" serve --simulated-gateway >"$WORK/prepaid-$durability.out" 2>/dev/null &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q serving "$WORK/prepaid-$durability.out" 2>/dev/null && break; sleep 0.1; done
  for shape in ${SHAPES//,/ }; do
    debits=$((SECONDS_EACH * $(shape_rate "$shape")))
    # shellcheck disable=SC2046 # the shape's flags are words
    json=$("$PREPAID" bench --addr 127.0.0.1:17070 --token "$TOKEN" --accounts "$ACCOUNTS" --debits "$debits" \
      --conns "$(shape_conns "$shape")" $(shape_prepaid "$shape") --json 2>/dev/null)
    rps=$(echo "$json" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["throughput_per_s"]))')
    record "$shape" "prepaid served durability=$durability" "$rps"
  done
  kill -TERM "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
done

# --- the table -----------------------------------------------------------
echo
echo "authorization workload: $ACCOUNTS accounts, ~${SECONDS_EACH}s per system and shape"
printf '%-10s %-45s %14s %16s\n' "shape" "system" "debits/s" "vs prepaid sync"
for shape in ${SHAPES//,/ }; do
  base=$(awk -F'\t' -v s="$shape" '$1 == s && $2 == "prepaid served durability=sync" {print $3}' "$RESULTS")
  while IFS=$'\t' read -r sh name rps; do
    [ "$sh" = "$shape" ] || continue
    ratio=$(python3 -c "print(f'{float($rps)/float(${base:-0}):.2f}x' if float(${base:-0}) > 0 else 'n/a')")
    printf '%-10s %-45s %14.0f %16s\n' "$shape" "$name" "$rps" "$ratio"
  done < "$RESULTS"
done
echo "shapes: single = $CONNS connections, 1 in flight each; pipelined = $CONNS connections, 32 in flight each;"
echo "        batch = 4 connections, 1,000 debits per call (Redis: pipeline of 1,000)"
