#!/usr/bin/env bash
# Runs every fuzz target for a bounded time: `bash fuzz/run.sh [SECONDS [RUNS]]`
# (default 20 s each; CI uses the default; with RUNS, each target stops after
# that many executions or SECONDS, whichever comes first). Installs
# cargo-fuzz if missing.
# Stable Rust works with --sanitizer none (libFuzzer's coverage guidance,
# no AddressSanitizer, which needs nightly; the crate has no unsafe code of
# its own). Long mode, 10M executions of each target (docs/RELIABILITY.md):
#   bash fuzz/run.sh 3600 10000000
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-20}
RUNS=${2:-0}
runs_flag=()
[ "$RUNS" -gt 0 ] && runs_flag=(-runs="$RUNS")
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
if [ -z "${CARGO_TARGET_DIR:-}" ] && mkdir -p /var/cache/prepaid-fuzz-target 2>/dev/null; then
  export CARGO_TARGET_DIR=/var/cache/prepaid-fuzz-target
fi
for target in wire_request admin_json ledger_apply; do
  echo "fuzz: $target for ${SECONDS_EACH}s"
  log=$(mktemp)
  if ! cargo fuzz run --sanitizer none -O "$target" -- -max_total_time="$SECONDS_EACH" "${runs_flag[@]}" >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz: $target failed; the input is under fuzz/artifacts/$target/" >&2
    rm -f "$log"
    exit 1
  fi
  grep -E '^Done|^#[0-9]+.*DONE' "$log" || true
  rm -f "$log"
done
