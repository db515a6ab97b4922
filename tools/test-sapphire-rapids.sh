#!/usr/bin/env bash
# The float16 lanes of AVX512-FP16 (custom_ops/kernels/kernels_avx512fp16.cc)
# tested on an emulated Sapphire Rapids CPU: the C++ kernel tests, linked
# static, run their "half-lanes" part (every float16 input of every op and
# order bit for bit against the emulated float16 algorithm, every tail and
# offset) under tools/run-sapphire-rapids.sh. Called by run-tests.sh; about
# 1-2 minutes to build Bochs on first use, then about 1 minute per run.
#
# Skipped with one line (exit 0, or 1 if QUAKE_REQUIRE_SAPPHIRE_RAPIDS=1) when
# this is no x86-64 machine, when the CPU has AVX512-FP16 itself (the native
# CTest run then tests the lanes), when the compiler has no -mavx512fp16,
# or when the emulator cannot be set up or
# boot (no apt-get, no network on first use: its message says why). A
# failing test, a timeout or a run that never reached the AVX512-FP16 kernels
# fails the step.
# QUAKE_SKIP_SAPPHIRE_RAPIDS=1 skips the step.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
build=build/sapphire-rapids-test

skip() {
  if [ "${QUAKE_REQUIRE_SAPPHIRE_RAPIDS:-0}" = 1 ]; then
    echo "Sapphire Rapids kernel tests: FAILED, required by QUAKE_REQUIRE_SAPPHIRE_RAPIDS=1 but $1" >&2
    exit 1
  fi
  echo "Sapphire Rapids kernel tests: skipped, $1"
  exit 0
}

[ "${QUAKE_SKIP_SAPPHIRE_RAPIDS:-0}" = 1 ] && skip "QUAKE_SKIP_SAPPHIRE_RAPIDS=1"
[ "$(uname -m)" = x86_64 ] || skip "this machine is not x86-64"
grep -qw avx512_fp16 /proc/cpuinfo 2>/dev/null && skip "this CPU has AVX512-FP16: the native CTest run tested the lanes"

cmake --no-warn-unused-cli -S . -B "$build" -DQUAKE_KERNELS_ONLY=ON -DQUAKE_BUILD_TESTS=ON \
      -DCMAKE_BUILD_TYPE=Release -DCMAKE_EXE_LINKER_FLAGS=-static >/dev/null
# Without the compiler's -mavx512fp16 (GCC < 12) the build has only the stub:
# there are no lanes to test (CMakeLists.txt).
grep -q '^QUAKE_HAVE_AVX512FP16_FLAG:INTERNAL=1$' "$build/CMakeCache.txt" ||
  skip "the compiler has no -mavx512fp16, so this build has no float16 lanes"
cmake --build "$build" --target test_kernels -j "$(nproc)" >/dev/null

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
tools/run-sapphire-rapids.sh "$build/test_kernels" half-lanes >"$log" 2>&1
status=$?
set -e
case $status in
  0) ;;
  125)
    tail -n 5 "$log" >&2
    skip "the emulator could not be set up or did not boot (status 125; see above)" ;;
  *)
    cat "$log"
    echo "Sapphire Rapids kernel tests: FAILED (status $status)" >&2
    exit 1 ;;
esac
# The run must have reached the AVX512-FP16 kernels, not only the emulated layer.
if ! grep -q "^== float16 lanes: AVX512-FP16" "$log"; then
  cat "$log"
  echo "Sapphire Rapids kernel tests: FAILED, the emulated CPU did not run the AVX512-FP16 kernels" >&2
  exit 1
fi
summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
# What the library read of the emulated Intel CPU's caches (CPUID leaf 4 via glibc).
caches=$(grep -E '^caches read at run time' "$log" | sed 's/^caches read at run time: //')
echo "Sapphire Rapids kernel tests under Bochs (float16 lanes): $summary in $((SECONDS - start)) s (caches: $caches)"
