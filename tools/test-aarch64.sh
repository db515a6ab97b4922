#!/usr/bin/env bash
# The C++ kernel tests (custom_ops/tests/test_kernels.cc) cross-compiled for
# AArch64 and run under qemu-user through CTest, so an x86-64 machine tests
# the NEON table (and the scalar one as compiled for AArch64). Called by
# run-tests.sh; builds only the kernels and their tests (QUAKE_KERNELS_ONLY:
# no ONNX Runtime) in build/aarch64 with cmake/toolchain-aarch64-linux-gnu.cmake.
#
# Needs Debian's g++-aarch64-linux-gnu and qemu-user; installs them with
# apt-get when they are missing. When it cannot (no apt-get, not root, the
# install fails), it prints one line saying the aarch64 tests were skipped and
# why, and exits 0, or 1 if QUAKE_REQUIRE_AARCH64=1. QUAKE_SKIP_AARCH64=1
# skips the step. On an AArch64 machine the native CTest run already tests
# the NEON table, so there is nothing to do.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
build=build/aarch64
triple=aarch64-linux-gnu
packages=(g++-$triple qemu-user)

skip() {
  if [ "${QUAKE_REQUIRE_AARCH64:-0}" = 1 ]; then
    echo "aarch64 kernel tests: FAILED, required by QUAKE_REQUIRE_AARCH64=1 but $1" >&2
    exit 1
  fi
  echo "aarch64 kernel tests: skipped, $1"
  exit 0
}

if [ "${QUAKE_SKIP_AARCH64:-0}" = 1 ]; then
  skip "QUAKE_SKIP_AARCH64=1"
fi
case "$(uname -m)" in
  aarch64 | arm64) skip "this machine is AArch64: the native CTest run tested the NEON table" ;;
esac

have_tools() {
  command -v "$triple-g++" >/dev/null && { command -v qemu-aarch64 >/dev/null || command -v qemu-aarch64-static >/dev/null; }
}

if ! have_tools; then
  command -v apt-get >/dev/null || skip "${packages[*]} are missing and there is no apt-get to install them"
  [ "$(id -u)" = 0 ] || skip "${packages[*]} are missing and installing them with apt-get needs root"
  echo "aarch64 kernel tests: installing ${packages[*]} with apt-get"
  log=$(mktemp)
  export DEBIAN_FRONTEND=noninteractive
  # A failed update may still leave usable lists: the install decides.
  if ! { apt-get update -qq || true; apt-get install -y -qq --no-install-recommends "${packages[@]}"; } >"$log" 2>&1; then
    reason=$(grep -E '^E:' "$log" | head -n 1)
    rm -f "$log"
    skip "apt-get could not install ${packages[*]}: ${reason:-see apt-get update / install}"
  fi
  rm -f "$log"
  have_tools || skip "${packages[*]} installed but $triple-g++ or qemu-aarch64 is still not on PATH"
fi

cmake --no-warn-unused-cli -S . -B "$build" -DCMAKE_TOOLCHAIN_FILE=cmake/toolchain-aarch64-linux-gnu.cmake \
      -DQUAKE_KERNELS_ONLY=ON -DQUAKE_BUILD_TESTS=ON >/dev/null
cmake --build "$build" --target test_kernels test_attention -j "$(nproc)" >/dev/null
# Both test programs at once (each is single-threaded under qemu), test_kernels
# in its quick mode: a tenth of the dense inputs, rows up to 5000 (every check
# as in the native run, which has the full sets).
QUAKE_TEST_QUICK=1 ctest --test-dir "$build" --output-on-failure -j 2

# One line with what ran: each program's own "N passed, M failed" and the
# tables test_kernels saw (a build where dispatch found no NEON table would
# pass on scalar alone).
log="$build/Testing/Temporary/LastTest.log"
tables=$(sed -n 's/^== table //p' "$log" | sort -u | paste -sd, -)
counts=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | paste -sd ';' - | sed 's/;/ + /g')
case ",$tables," in
  *,neon,*) ;;
  *) echo "aarch64 kernel tests: FAILED, the NEON table did not run (tables: ${tables:-none})" >&2; exit 1 ;;
esac
echo "aarch64 kernel tests under qemu (tables $tables): $counts in $((SECONDS - start)) s"
