// The FlashAttention-2 block (attention_flash.h) of the AVX2 + FMA + F16C
// table: built with those flags only (CMakeLists.txt), so Eigen's GEMM runs on
// 256-bit FMA; called only after dispatch checked the CPU.
#if defined(__x86_64__)
#define QUAKE_ATTENTION_BLOCK attention_block_avx2
#define QUAKE_ATTENTION_PACK attention_pack_avx2
#define QUAKE_EIGEN quake_eigen_avx2
#include "attention_flash.h"
#endif
