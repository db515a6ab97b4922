// The FlashAttention-2 block (attention_flash.h) of the scalar table, built with
// the architecture's baseline flags (Eigen then uses SSE2 on x86-64 and ASIMD
// on AArch64, which every such CPU has).
#define QUAKE_ATTENTION_BLOCK attention_block_scalar
#define QUAKE_ATTENTION_PACK attention_pack_scalar
#define QUAKE_EIGEN quake_eigen_scalar
#include "attention_flash.h"
