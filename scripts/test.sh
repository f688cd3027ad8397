#!/usr/bin/env bash
# Runs the whole test suite: unit tests, in-process RPC tests, and the
# process-level tests that start real service and client binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
micro_need_packages protoc:protobuf-compiler etcd:etcd-server nats-server:nats-server ip:iproute2 python3:python3
# The gRPC interop tests make a venv and pip-install grpcio into it (target/tmp).
python3 -c 'import venv, ensurepip' 2>/dev/null || micro_need_packages_force python3-venv
# The plugin crate's unsafe code: every block has a SAFETY note that covers
# exactly one operation (README, "Nothing in the crate's safe API can cause
# undefined behaviour"). About 20 s from a clean checkout.
if ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add clippy >/dev/null 2>&1 || true
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy -p micro-plugin --features host --all-targets --locked -- \
    -D clippy::undocumented_unsafe_blocks -D clippy::multiple_unsafe_ops_per_block
elif [ -n "${CI:-}" ]; then
  echo "error: clippy is missing and could not be installed (rustup component add clippy)" >&2
  exit 1
else
  echo "warning: clippy is missing (rustup component add clippy): the unsafe-code lints did not run" >&2
fi
cargo test --workspace --locked "$@"
