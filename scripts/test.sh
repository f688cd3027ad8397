#!/usr/bin/env bash
# Runs the whole test suite: unit tests, in-process RPC tests, and the
# process-level tests that start real service and client binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
micro_need_packages protoc:protobuf-compiler etcd:etcd-server nats-server:nats-server ip:iproute2 python3:python3
# The gRPC interop tests make a venv and pip-install grpcio into it (target/tmp).
python3 -c 'import venv, ensurepip' 2>/dev/null || micro_need_packages_force python3-venv
cargo test --workspace --locked "$@"
