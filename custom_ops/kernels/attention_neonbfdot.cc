// The FlashAttention-2 block (attention_flash.h) of precision "bfloat16" on
// AArch64 with FEAT_BF16 by BFDOT ("NEON BFDOT", chosen by
// QUAKE_NEON_BF16=bfdot): built with -march=armv8.2-a+bf16 (CMakeLists.txt),
// the tile products by attention_bf16_neon_bfdot.h's micro-kernel; called
// only after attention_bf16_block (dispatch.cc) found BF16 in HWCAP2.
#if defined(__aarch64__)
#define QUAKE_ATTENTION_BLOCK attention_block_neonbfdot
#define QUAKE_EIGEN quake_eigen_neonbfdot
#define QUAKE_ATTENTION_BF16 "attention_bf16_neon_bfdot.h"
#include "attention_flash.h"
#endif
