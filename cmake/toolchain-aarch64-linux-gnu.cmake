# Cross build for AArch64 Linux with Debian's GNU cross toolchain
# (g++-aarch64-linux-gnu); tests run under qemu-user (qemu-aarch64) with the
# toolchain's sysroot as library root, so `ctest` works on an x86-64 host.
# Used by tools/test-aarch64.sh:
#   cmake -S . -B build/aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchain-aarch64-linux-gnu.cmake \
#         -DQUAKE_KERNELS_ONLY=ON -DQUAKE_BUILD_TESTS=ON
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(QUAKE_AARCH64_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${QUAKE_AARCH64_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${QUAKE_AARCH64_TRIPLE}-g++)

set(QUAKE_AARCH64_SYSROOT /usr/${QUAKE_AARCH64_TRIPLE})
set(CMAKE_FIND_ROOT_PATH ${QUAKE_AARCH64_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# add_test() commands naming an executable target run through this.
find_program(QUAKE_QEMU_AARCH64 qemu-aarch64 qemu-aarch64-static)
if(QUAKE_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${QUAKE_QEMU_AARCH64} -L ${QUAKE_AARCH64_SYSROOT})
endif()
