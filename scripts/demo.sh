#!/usr/bin/env bash
# The quick-start demo: a greeter service in one process, called from another
# over the default registry (`local`) and transport (`tcp`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
micro_need_packages protoc:protobuf-compiler

echo "==> building the greeter example"
cargo build --locked -q -p greeter
bin=target/debug

echo "==> starting greeter-service (registry: local, transport: tcp)"
MICRO_LOG_LEVEL=${MICRO_LOG_LEVEL:-info} "$bin/greeter-service" &
svc=$!
trap 'kill -TERM $svc 2>/dev/null || true; wait $svc 2>/dev/null || true' EXIT

echo "==> calling Greeter.Hello from greeter-client"
"$bin/greeter-client" --name "${NAME:-World}" --wait 20s

echo "==> stopping the service (SIGTERM: deregister and drain)"
kill -TERM $svc
wait $svc
trap - EXIT
