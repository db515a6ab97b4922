// The FlashAttention-2 block (attention_flash.h) of the NEON table (AArch64,
// where ASIMD is the baseline).
#if defined(__aarch64__)
#define QUAKE_ATTENTION_BLOCK attention_block_neon
#define QUAKE_ATTENTION_PACK attention_pack_neon
#define QUAKE_EIGEN quake_eigen_neon
#include "attention_flash.h"
#endif
