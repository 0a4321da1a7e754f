#!/usr/bin/env bash
# The same authorization workload — strict debits of 1..100 µ$ against funded
# accounts, refused when the balance would go below zero — on Redis (a Lua
# script via EVALSHA, appendfsync everysec and always), PostgreSQL
# (UPDATE … WHERE balance >= amount, synchronous_commit off and on) and
# prepaid served (async and sync durability), in one run, on loopback ports
# of its own. Prints one table with the ratios to prepaid sync. Installs
# what is missing (Debian packages), stops everything it started.
#
#   bench/compare.sh [--accounts N] [--seconds S] [--conns N] [--batch N]
#
# Needs root or sudo for apt-get and to run PostgreSQL as its own user.
set -euo pipefail
cd "$(dirname "$0")/.."

ACCOUNTS=10000
SECONDS_EACH=10
CONNS=64
BATCH=1
while [ $# -gt 0 ]; do
  case "$1" in
    --accounts) ACCOUNTS=$2; shift 2 ;;
    --seconds) SECONDS_EACH=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    *) echo "compare.sh: unknown flag $1" >&2; exit 2 ;;
  esac
done

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
record() { printf '%s\t%s\n' "$1" "$2" >> "$RESULTS"; }

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
  n=$((SECONDS_EACH * 60000))
  out=$(redis-benchmark -p $REDIS_PORT -c "$CONNS" -n "$n" -r "$ACCOUNTS" -P "$BATCH" -q \
    EVALSHA "$SHA" 1 "acct:__rand_int__" 50 2>/dev/null | tr '\r' '\n' | grep -E 'requests per second' | tail -1)
  rps=$(echo "$out" | grep -oE '[0-9.]+ requests per second' | awk '{print $1}')
  record "redis lua appendfsync=$mode" "${rps:-0}"
  kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
done

# --- PostgreSQL --------------------------------------------------------
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
  record "postgresql update synchronous_commit=$sc" "${tps:-0}"
done
$SUDO runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -m fast stop >/dev/null

# --- prepaid -----------------------------------------------------------
TOKEN="compare-token-0123456789"
for durability in async sync; do
  PREPAID_DATA_DIR="$WORK/prepaid-$durability" PREPAID_DURABILITY=$durability \
    PREPAID_GRPC_ADDR=127.0.0.1:17070 PREPAID_HTTP_ADDR=127.0.0.1:17071 PREPAID_TOKENS="bench:admin:$TOKEN" \
    "$PREPAID" serve --simulated-gateway >"$WORK/prepaid-$durability.out" 2>/dev/null &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q serving "$WORK/prepaid-$durability.out" 2>/dev/null && break; sleep 0.1; done
  debits=$((SECONDS_EACH * 50000))
  json=$("$PREPAID" bench --addr 127.0.0.1:17070 --token "$TOKEN" --accounts "$ACCOUNTS" --debits "$debits" \
    --conns "$CONNS" --batch "$BATCH" --json 2>/dev/null)
  rps=$(echo "$json" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["throughput_per_s"]))')
  record "prepaid served durability=$durability" "$rps"
  kill -TERM "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
done

# --- the table -----------------------------------------------------------
base=$(grep -F "prepaid served durability=sync" "$RESULTS" | cut -f2)
echo
echo "authorization workload: $ACCOUNTS accounts, $CONNS connections, batch $BATCH, ~${SECONDS_EACH}s each"
printf '%-45s %14s %12s\n' "system" "debits/s" "vs prepaid sync"
while IFS=$'\t' read -r name rps; do
  ratio=$(python3 -c "print(f'{float($rps)/float($base):.2f}x' if float($base) > 0 else 'n/a')")
  printf '%-45s %14.0f %12s\n' "$name" "$rps" "$ratio"
done < "$RESULTS"
