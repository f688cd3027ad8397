#!/usr/bin/env bash
# Runs the whole test suite: unit tests, in-process RPC tests, and the
# process-level tests that start real service and client binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
micro_need_packages protoc:protobuf-compiler etcd:etcd-server nats-server:nats-server ip:iproute2
cargo test --workspace --locked "$@"
