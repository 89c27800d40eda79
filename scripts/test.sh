#!/usr/bin/env bash
# test.sh — the README's test command: set everything up, build with warnings as errors, run
# every test through ctest, then rebuild the C tests under AddressSanitizer + UBSan and run them
# again (malformed-input tests must be clean there).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
KVS_SKIP_FILTERS=1 KVS_CMAKE_ARGS="-DKVS_WERROR=ON" "$root/scripts/setup.sh"
export PATH="$root/.venv/bin:$PATH"
echo "[test] ctest (Release, -Werror)" >&2
ctest --test-dir build --output-on-failure -j2 --timeout 600
echo "[test] C unit tests under AddressSanitizer + UBSan" >&2
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DKVS_SANITIZE=ON -DKVS_WERROR=ON -DKVS_CUDA=OFF >/dev/null
cmake --build build-asan -j"$(nproc)" >/dev/null
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j2 --timeout 900 -E '^pytest_'
