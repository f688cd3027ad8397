# Sourced by the per-call counting scripts: starts a micro-bench RPC
# contender's server on a private registry and sets `registry`, `addr` and
# `server`; `stop_bench_server` ends it and removes what it made.
# needs: root and contender set; a trap on EXIT that calls stop_bench_server.
# env: BENCH (default target/release/micro-bench), PLUGINS (default target/bench).

bench=${BENCH:-$root/target/release/micro-bench}
plugins=${PLUGINS:-$root/target/bench}
[ -x "$bench" ] || { echo "error: no $bench: cargo build --release -p micro-bench" >&2; exit 1; }

start_bench_server() {
  mkdir -p "$plugins"
  registry=$(mktemp -d "$plugins/registry-count.XXXXXX")
  chmod 700 "$registry"
  feed=$(mktemp -u)
  mkfifo "$feed"
  # The server stops when its stdin closes: hold it open on a FIFO until the end.
  MICRO_LOG_LEVEL=error MICRO_BENCH_REGISTRY=$registry \
    "$bench" rpc-server --contender "$contender" --plugins "$plugins" <"$feed" >"$registry/addr" &
  server=$!
  exec 4>"$feed"
  for _ in $(seq 1 300); do
    grep -q '^ADDR ' "$registry/addr" 2>/dev/null && break
    kill -0 "$server" 2>/dev/null || { echo "error: the $contender server did not start" >&2; exit 1; }
    sleep 0.1
  done
  addr=$(sed -n 's/^ADDR //p' "$registry/addr")
  [ -n "$addr" ] || { echo "error: the $contender server did not say where it listens within 30 s" >&2; exit 1; }
}

stop_bench_server() {
  exec 4>&- 2>/dev/null || true
  [ -n "${server:-}" ] && kill "$server" 2>/dev/null || true
  rm -rf "${registry:-}" "${feed:-}"
}
