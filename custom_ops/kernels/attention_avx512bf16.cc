// The FlashAttention-2 block (attention_flash.h) of precision "bfloat16" on
// AVX512-BF16: the AVX-512 flags plus -mavx512bf16 (CMakeLists.txt), the tile
// products by attention_bf16_avx512.h's micro-kernel; called only after
// attention_bf16_block (dispatch.cc) found AVX512-BF16 on the CPU.
#if defined(__x86_64__)
// GCC 12's AVX-512 headers self-initialise their _mm512_undefined_* values,
// which -Wmaybe-uninitialized reports at every masked intrinsic.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define QUAKE_ATTENTION_BLOCK attention_block_avx512bf16
#define QUAKE_EIGEN quake_eigen_avx512bf16
#define QUAKE_ATTENTION_BF16 "attention_bf16_avx512.h"
#include "attention_flash.h"
#endif
