#!/usr/bin/env bash
# Sets up a virtual environment (.venv), builds and installs quake-onnx with
# its test extras, checks the lint (ruff, clang-format), then runs the C++
# kernel tests (CTest: native, sanitized, and cross-compiled for AArch64 under
# qemu-user) and the Python tests.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet ".[test]"

# Lint: ruff (lint and format, pyproject.toml) over the Python, clang-format
# (.clang-format) over the C++; the versions are pinned in the test extras.
.venv/bin/ruff check --quiet . && .venv/bin/ruff format --check --quiet .
find custom_ops tests/oplib tools \( -name '*.cc' -o -name '*.h' \) -print0 |
  xargs -0 .venv/bin/clang-format --dry-run --Werror

# C++ kernel tests: every ISA table of this CPU against the scalar definition.
cmake -S . -B build/ctest -DQUAKE_BUILD_TESTS=ON >/dev/null
cmake --build build/ctest --target test_kernels test_attention -j "$(nproc)" >/dev/null
ctest --test-dir build/ctest --output-on-failure

# The same kernel tests under AddressSanitizer + UndefinedBehaviorSanitizer.
cmake -S . -B build/asan -DQUAKE_SANITIZE=ON -DQUAKE_BUILD_TESTS=ON >/dev/null
cmake --build build/asan --target test_kernels test_attention -j "$(nproc)" >/dev/null
ctest --test-dir build/asan --output-on-failure

# Two emulated CPUs, side by side (each emulator runs one thread, and the
# longest test program alone keeps one core busy; its output is printed when
# both are done):
# - the float16 lanes of AVX512-FP16 on an emulated Sapphire Rapids CPU (Bochs,
#   built from Debian's source on first use, its own private apt root), or why
#   they were skipped (QUAKE_REQUIRE_SAPPHIRE_RAPIDS=1: fail);
# - the same kernel tests cross-compiled for AArch64 and run under qemu-user
#   (the NEON table); installs g++-aarch64-linux-gnu and qemu-user with apt-get
#   when missing, or prints why it skipped them (QUAKE_REQUIRE_AARCH64=1: fail).
# In a process group of its own (setsid), so that Ctrl-C or a failure here
# takes the emulator down too: a background job of a script ignores SIGINT.
sapphire_log=$(mktemp)
setsid tools/test-sapphire-rapids.sh >"$sapphire_log" 2>&1 &
sapphire_pid=$!
trap 'kill -TERM -- "-$sapphire_pid" 2>/dev/null; rm -f "$sapphire_log"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
aarch64_status=0
tools/test-aarch64.sh || aarch64_status=$?
sapphire_status=0
wait "$sapphire_pid" || sapphire_status=$?
trap - EXIT INT TERM
cat "$sapphire_log" && rm -f "$sapphire_log"
if [ "$aarch64_status" != 0 ] || [ "$sapphire_status" != 0 ]; then exit 1; fi

# Python tests against the installed package (not the source tree).
cd tests && ../.venv/bin/python -m pytest -p no:cacheprovider "$@"
