// The FlashAttention-2 block (attention_flash.h) of the AVX-512 table: built
// with the AVX-512 F/BW/DQ/VL flags only (CMakeLists.txt), so Eigen's GEMM runs
// on 512-bit FMA; called only after dispatch checked the CPU.
#if defined(__x86_64__)
// GCC 12's AVX-512 headers self-initialise their _mm512_undefined_* values,
// which -Wmaybe-uninitialized reports at every masked intrinsic Eigen uses.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define QUAKE_ATTENTION_BLOCK attention_block_avx512
#define QUAKE_ATTENTION_PACK attention_pack_avx512
#define QUAKE_EIGEN quake_eigen_avx512
#include "attention_flash.h"
#endif
