#!/usr/bin/env bash
# Counts the instructions one call costs the client process of a micro-bench
# RPC contender, with valgrind's callgrind: its `rpc-server` runs natively,
# its `rpc-client` (64 callers unless CALLERS says otherwise, 64 B bodies, by
# service name) under callgrind for 2,000 calls and for CALLS + 2,000; the
# difference divided by CALLS is one call without start-up. An instruction
# count does not depend on what else the machine is doing, so a change of a
# few hundredths shows where calls/s cannot (BENCHMARKS.md). It runs REPS
# times (the client's batching and its 10 ms selection refresh still vary a
# little between runs) and prints each figure, sorted, and their median.
#
# usage: scripts/instructions-per-call.sh CONTENDER [REPS] [CALLS]
#   CONTENDER  a micro-bench contender (micro, micro-brpc, micro-brpc-in, …)
#   REPS       runs, default 5
#   CALLS      calls measured per run, default 100000
# env: BENCH (default target/release/micro-bench), PLUGINS (default target/bench),
#      CALLERS (concurrent callers, default 64)
set -euo pipefail

if [ $# -lt 1 ]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
contender=$1
reps=${2:-5}
calls=${3:-100000}
root=$(cd "$(dirname "$0")/.." && pwd)
command -v valgrind >/dev/null || { echo "error: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
. "$root/scripts/bench-server.sh"
out=$(mktemp -d)
cleanup() {
  stop_bench_server
  rm -rf "$out"
}
trap cleanup EXIT
start_bench_server

# Instructions of one client run of $1 calls (callgrind's "Collected" total).
count() {
  MICRO_LOG_LEVEL=error MICRO_BENCH_REGISTRY=$registry timeout 900 valgrind --tool=callgrind \
    --callgrind-out-file="$out/cg" "$bench" rpc-client --contender "$contender" --addr "$addr" \
    --callers "${CALLERS:-64}" --payload 64 --warmup 0 --seconds 1 --calls "$1" --plugins "$plugins" \
    2>"$out/err" >/dev/null || { tail -5 "$out/err" >&2; return 1; }
  sed -n 's/^==[0-9]*== Collected : //p' "$out/err"
}
figures=()
for i in $(seq 1 "$reps"); do
  base=$(count 2000)
  full=$(count $((calls + 2000)))
  [ -n "$base" ] && [ -n "$full" ] || { echo "error: callgrind counted nothing" >&2; exit 1; }
  figures+=($(((full - base) / calls)))
  echo "run $i: ${figures[-1]} instructions per call" >&2
done
printf '%s\n' "${figures[@]}" | sort -n | awk -v c="$contender" -v n="$calls" '
  { v[NR] = $1; line = line (NR > 1 ? ", " : "") $1 }
  END { printf "%s instructions per call: median %d (runs: %s; %d calls each)\n", c, v[int((NR + 1) / 2)], line, n }'
