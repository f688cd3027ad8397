#!/usr/bin/env bash
# Reproduces BENCHMARKS.md: builds micro-bench and the tcpx transport plugin
# in release mode, then runs each benchmark. Takes about 15 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
micro_need_packages protoc:protobuf-compiler nats-server:nats-server
SECONDS_PER=${SECONDS_PER:-3}
ROUNDS=${ROUNDS:-3}
echo "==> building (release)"
cargo build --locked --release -q -p micro-bench -p micro-cli -p greeter
mkdir -p target/bench
target/release/micro plugin build --name tcpx --type transport --path examples/plugins/tcpx \
  --new-func new_transport -o target/bench/tcpx.so --target-dir target/plugin-release
echo "==> machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "==> plugin load + verify + init (fresh process per sample)"
target/release/micro-bench plugin-load --plugin target/bench/tcpx.so --runs 50
target/release/micro plugin build --name brpc --type client --path examples/plugins/brpc \
  --new-func new_client -o target/bench/brpc.so --target-dir target/plugin-release
echo "==> the plugin boundary's own code per call (in-process, one thread)"
target/release/micro-bench crossing --rounds "$ROUNDS"
echo "==> built-in tcp transport vs the same transport loaded as a plugin"
target/release/micro-bench boundary --kind transport --plugin target/bench/tcpx.so --name tcpx \
  --callers 1,64 --seconds "$SECONDS_PER" --rounds "$ROUNDS"
echo "==> built-in mucp client vs the brpc client plugin (which wraps mucp)"
MICRO_LOG_LEVEL=warn target/release/micro-bench boundary --kind client --plugin target/bench/brpc.so --name brpc \
  --callers 1,64 --seconds "$SECONDS_PER" --rounds "$ROUNDS"
echo "==> footprint: idle greeter service, and per idle connection"
target/release/micro-bench footprint --service target/release/greeter-service --connections 1000
echo "==> brokers: messages/s published and delivered (nats-server on loopback)"
target/release/micro-bench broker --messages 50000
echo "==> RPC: unary echo, every contender's server and client in separate processes (about 12 minutes)"
MICRO_LOG_LEVEL=warn target/release/micro-bench rpc --plugins target/bench --out target/bench \
  --callers 1,16,64,256 --payloads 64,4096 --seconds "${RPC_SECONDS:-2}" --rounds "$ROUNDS"
echo "==> head-of-line: Pings beside a CPU-bound handler, CPU-bound calls by server threads"
target/release/micro-bench hol --seconds 3 --rounds "$ROUNDS"
mkdir -p docs
cp target/bench/rpc-64.svg target/bench/rpc-4096.svg docs/
echo "charts copied to docs/rpc-64.svg and docs/rpc-4096.svg"
