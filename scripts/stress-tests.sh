#!/usr/bin/env bash
# Runs the whole test suite RUNS times in a row (default 20) while every
# core is kept busy by stress-ng (Debian's stress-ng, installed when
# missing), to find tests that depend on timing luck. Each run's result
# and log go to target/stress/; the summary line is what the README records.
#   RUNS=5 bash scripts/stress-tests.sh          # fewer runs
#   bash scripts/stress-tests.sh -p micro        # arguments go to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
micro_need_packages stress-ng:stress-ng
RUNS=${RUNS:-20}
out=target/stress
mkdir -p "$out"
echo "==> building the tests once (without load)"
bash scripts/test.sh --no-run "$@" >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
cores=$(nproc)
echo "==> loading all $cores cores with stress-ng --cpu $cores"
stress-ng --cpu "$cores" --timeout 0 --quiet &
load=$!
trap 'kill $load 2>/dev/null || true; wait $load 2>/dev/null || true' EXIT
passed=0
for i in $(seq 1 "$RUNS"); do
  start=$(date +%s)
  if bash scripts/test.sh --no-fail-fast "$@" >"$out/run-$i.log" 2>&1; then
    passed=$((passed + 1)); verdict=passed
  else
    verdict="FAILED (log: $out/run-$i.log)"
    grep -E '^test .* FAILED|panicked at' "$out/run-$i.log" | head -5 || true
  fi
  echo "run $i/$RUNS: $verdict in $(( $(date +%s) - start )) s"
done
echo "$passed of $RUNS runs passed under CPU load ($cores cores busy)" | tee "$out/summary"
[ "$passed" -eq "$RUNS" ]
