#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (FUZZ_SECONDS, default 30) with
# cargo-fuzz and libFuzzer. This machine has only the stable toolchain, so
# cargo-fuzz runs with RUSTC_BOOTSTRAP=1 and without a sanitizer (-s none):
# panics, aborts, timeouts and memory blow-ups are found, memory errors that
# only ASan would see are not. Crashes land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
micro_need_packages protoc:protobuf-compiler
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
SECS=${FUZZ_SECONDS:-30}
for t in ${*:-frame_decode registry_json plugin_wire plugin_header}; do
  echo "==> fuzzing $t for ${SECS}s"
  RUSTC_BOOTSTRAP=1 cargo fuzz run -s none "$t" -- -max_total_time="$SECS" -rss_limit_mb=2048 -max_len=65536
done
