#!/usr/bin/env bash
# Counts a perf event per call in the client process of one micro-bench RPC
# contender: its `rpc-server` and `rpc-client` run directly (64 callers unless
# CALLERS says otherwise, 64 B bodies, by service name), the client under
# `perf stat` twice, for 1,000 calls and for CALLS + 1,000; the difference
# divided by CALLS is the cost of one call without start-up. Counts move far
# less between runs than calls/s do on a noisy machine (BENCHMARKS.md). For
# task-clock it also prints the server's CPU per call, from its clock ticks
# around the same two runs.
#
# usage: scripts/count-per-call.sh CONTENDER EVENT [CALLS]
#   CONTENDER  a micro-bench contender (micro, micro-brpc, micro-brpc-in, …)
#   EVENT      a perf event: task-clock (ms of CPU), context-switches,
#              syscalls:sys_enter_sendto, probe_libc:malloc (after
#              `perf probe -x /lib/x86_64-linux-gnu/libc.so.6 malloc`)
#   CALLS      calls measured, default 100000
# env: BENCH (default target/release/micro-bench), PLUGINS (default target/bench),
#      CALLERS (concurrent callers, default 64)
set -euo pipefail

if [ $# -lt 2 ]; then
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
contender=$1
event=$2
calls=${3:-100000}
root=$(cd "$(dirname "$0")/.." && pwd)
command -v perf >/dev/null || { echo "error: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
. "$root/scripts/bench-server.sh"
trap stop_bench_server EXIT
start_bench_server

count() {
  MICRO_LOG_LEVEL=error MICRO_BENCH_REGISTRY=$registry perf stat -x, -e "$event" -- \
    "$bench" rpc-client --contender "$contender" --addr "$addr" --callers "${CALLERS:-64}" --payload 64 \
    --warmup 0 --seconds 1 --calls "$1" --plugins "$plugins" 2>&1 >/dev/null |
    awk -F, -v e="$event" '$3 == e { print $1 }'
}
# The server's CPU time in clock ticks (utime + stime, /proc/PID/stat) around
# each count, for the same subtraction: the 12th and 13th fields after the
# command name's closing parenthesis (the name may hold spaces).
server_ticks() { sed 's/^.*) //' "/proc/$server/stat" | awk '{ print $12 + $13 }'; }
s0=$(server_ticks)
base=$(count 1000)
s1=$(server_ticks)
full=$(count $((calls + 1000)))
s2=$(server_ticks)
[ -n "$base" ] && [ -n "$full" ] || { echo "error: perf counted nothing for $event" >&2; exit 1; }
# task-clock counts milliseconds: print microseconds.
awk -v b="$base" -v f="$full" -v n="$calls" -v c="$contender" -v e="$event" 'BEGIN {
  v = (f - b) / n; unit = ""
  if (e == "task-clock") { v *= 1000; unit = " µs" }
  printf "%s %s per call: %.3f%s (%d calls)\n", c, e, v, unit, n
}'
if [ "$event" = task-clock ]; then
  awk -v a="$s0" -v b="$s1" -v c="$s2" -v n="$calls" -v hz="$(getconf CLK_TCK)" -v k="$contender" 'BEGIN {
    printf "%s server CPU per call: %.1f µs (clock ticks of 1/%d s)\n", k, ((c - b) - (b - a)) / hz / n * 1e6, hz
  }'
fi
