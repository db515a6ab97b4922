// com.quake Attention below the op layer: the data of one call, its tiles and
// tasks, the per-ISA FlashAttention-2 block (attention_flash.h, compiled once
// per ISA by attention_<isa>.cc) and the ISA-independent planning around it
// (attention_plan.cc: broadcasting, tile sizes from the caches, the key split
// of decode shapes, the combination of split partials).
//
// Algorithm: FlashAttention-2 forward (Dao 2023) with the online softmax of
// Milakov & Gimelshein 2018; a query row's keys may be split into chunks whose
// partial (max, sum, unnormalised output) are combined afterwards
// (flash-decoding, Dao et al. 2023). Nothing of size Sq x Skv is ever held.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cpu_caches.h"

namespace quake {

// One step of the online softmax over a tile of raw scores, in place (the
// kernel table's OrderKernels::online_softmax; definition in kernels_scalar.cc).
// Row r (of `rows`) holds `cols` scores at s + r * ld_s; of them the first
// live(r) = clamp(r + diag + 1, 0, cols) take part (the causal limit), the
// others become 0. Per row: s <- scale * s + mask (mask: nullptr, or row r at
// mask + r * ld_mask; ld_mask 0 repeats one row), m_new = max(m, max s),
// s <- e^(s - m_new) by the quake core of the table's order, rescale =
// e^(m - m_new) (exact: it multiplies the accumulated rows, whose error must
// not grow with the number of tiles), l <- rescale * l + sum s, m <- m_new.
// Special rows: no live score above -inf so far -> s = 0, rescale = 1, l and m
// unchanged; a NaN or +inf score (or m already NaN) -> m = l = NaN, s = 0,
// rescale = 1 (the row's output is NaN).
using OnlineSoftmaxFn = void (*)(float* s, size_t ld_s, size_t rows, size_t cols, ptrdiff_t diag, float scale,
                                 const float* mask, size_t ld_mask, float* m, float* l, float* rescale);

// The live columns of row r in an online-softmax step: clamp(r + diag + 1, 0,
// cols). Internal linkage on purpose: ISA files must not share one copy of
// any inline code (cmake/CheckIsaObjects.cmake).
static inline size_t live_columns(size_t r, size_t cols, ptrdiff_t diag) {
  const ptrdiff_t live = static_cast<ptrdiff_t>(r) + diag + 1;
  if (live <= 0) return 0;
  return static_cast<size_t>(live) < cols ? static_cast<size_t>(live) : cols;
}

// Query rows per task and keys per tile (attention_plan.cc chooses them from the caches).
struct AttentionTiles {
  size_t bq;
  size_t bk;
};

// What every task of one op call shares. Element pointers are float, or
// float16 bits (uint16_t) when `half`.
struct AttentionParams {
  size_t sq, skv, d, dv;
  float scale;
  bool causal;        // key j > query i + (skv - sq) is masked
  bool k_transposed;  // K is [d x skv] instead of [skv x d]
  bool half;
  // precision "bfloat16": the block is a bf16 one (attention_bf16_block) and
  // the scratch holds its converted operands; false for the float32 blocks.
  bool bf16;
  // Key tiles packed once per call (plan_attention_packing): every head's
  // packed_k / packed_v are set, and the float32 block multiplies from them.
  bool packed;
  size_t mask_row_stride;   // elements between the mask rows of two queries (0: one row for all)
  bool mask_col_broadcast;  // the mask has one column (a value per query)
  AttentionTiles tiles;
  OnlineSoftmaxFn online_softmax;
  void (*f16_to_f32)(const uint16_t* x, float* y, size_t n);
  void (*f32_to_f16)(const float* x, uint16_t* y, size_t n);
};

// One output head: Q [sq x d], K [skv x d] (or [d x skv]), V [skv x dv], the
// mask's element (0, 0) or nullptr, Y [sq x dv]; all rows contiguous. With
// p.packed, packed_k and packed_v hold the head's key tiles as the ISA's
// AttentionPackFn wrote them (tile t at t * attention_packed_tile(p, d) and
// t * attention_packed_tile(p, dv) floats); heads that share K and V share them.
struct AttentionHead {
  const void* q;
  const void* k;
  const void* v;
  const void* mask;
  void* out;
  float* packed_k = nullptr;
  float* packed_v = nullptr;
};

// Query rows [q0, q1) of head `head` against keys [k0, k1). partial ==
// nullptr: the task owns those rows and writes Y. Otherwise it writes, per
// row, m, l and the unnormalised output (dv floats) to partial + r * (dv + 2),
// and combine_attention_partials finishes the rows.
struct AttentionTask {
  size_t head;
  size_t q0, q1, k0, k1;
  float* partial;
};

// The per-ISA FlashAttention-2 block (attention_flash.h). `scratch` holds
// attention_scratch_floats(p) floats and is the task's only work memory.
using AttentionBlockFn = void (*)(const AttentionParams& p, const AttentionHead& head, const AttentionTask& task,
                                  float* scratch);

// Packs key tile `tile` of head.k and head.v into head.packed_k and
// head.packed_v as the same ISA's float32 block multiplies them (Eigen's
// packed GEMM operands: K for S^T = K Q^T, V^T for O^T += V^T P^T), so a tile
// read by many query blocks is packed once instead of once per block.
// `scratch` holds attention_scratch_floats(p) floats (float16 conversion).
using AttentionPackFn = void (*)(const AttentionParams& p, const AttentionHead& head, size_t tile, float* scratch);

// Floats of one packed key tile of `width` columns (d for K, dv for V): a
// multiple of 16, so every tile starts 64-byte aligned as Eigen's packed
// operands must. Internal linkage, as live_columns.
static inline size_t attention_packed_tile(const AttentionParams& p, size_t width) {
  return (p.tiles.bk * width + 15) / 16 * 16;
}

// The block of each ISA (attention_<isa>.cc), for the kernel tables; the NEON
// one exists on AArch64 builds only, the x86 ones on x86-64 builds only.
void attention_block_scalar(const AttentionParams& p, const AttentionHead& head, const AttentionTask& task,
                            float* scratch);
void attention_block_avx2(const AttentionParams& p, const AttentionHead& head, const AttentionTask& task,
                          float* scratch);
void attention_block_avx512(const AttentionParams& p, const AttentionHead& head, const AttentionTask& task,
                            float* scratch);
void attention_block_neon(const AttentionParams& p, const AttentionHead& head, const AttentionTask& task,
                          float* scratch);
// The pack step of each float32 block (same ISAs and builds).
void attention_pack_scalar(const AttentionParams& p, const AttentionHead& head, size_t tile, float* scratch);
void attention_pack_avx2(const AttentionParams& p, const AttentionHead& head, size_t tile, float* scratch);
void attention_pack_avx512(const AttentionParams& p, const AttentionHead& head, size_t tile, float* scratch);
void attention_pack_neon(const AttentionParams& p, const AttentionHead& head, size_t tile, float* scratch);
// precision "bfloat16" (Q K^T and P V in bf16, float32 accumulation; the rest
// as the float32 blocks): the AVX512-BF16 block, x86-64 builds only, chosen by
// attention_bf16_block (kernels.h) on CPUs with AVX512-BF16.
void attention_block_avx512bf16(const AttentionParams& p, const AttentionHead& head, const AttentionTask& task,
                                float* scratch);
// The same on AArch64 with FEAT_BF16 (AArch64 builds only): by BFMMLA (the
// default) and by BFDOT (QUAKE_NEON_BF16=bfdot).
void attention_block_neonbfmmla(const AttentionParams& p, const AttentionHead& head, const AttentionTask& task,
                                float* scratch);
void attention_block_neonbfdot(const AttentionParams& p, const AttentionHead& head, const AttentionTask& task,
                               float* scratch);

// Columns of a packed bf16 B panel are padded to a multiple of this
// (attention_bf16_avx512.h: the micro-kernel's 32 columns).
constexpr size_t kBf16PanelColumns = 32;

// The bf16 images in the scratch (attention_scratch_floats and the block's
// carving of it, attention_flash.h): the words of a reduction of n values
// (pairs, rounded up to even), rows rounded up to even (the BFMMLA layout,
// attention_bf16_neon_bfmmla.h, takes rows in pairs and the reduction in
// quads), the columns of a B panel. Internal linkage, as live_columns.
static constexpr size_t bf16_scratch_words(size_t n) { return (n + 3) / 4 * 2; }
static constexpr size_t bf16_scratch_rows(size_t n) { return (n + 1) / 2 * 2; }
static constexpr size_t bf16_scratch_panel(size_t n) {
  return (n + kBf16PanelColumns - 1) / kBf16PanelColumns * kBf16PanelColumns;
}

// Scratch of one task, in floats: the score tile, the output rows, m, l,
// rescale, for float16 (or a one-column mask) converted tiles, and for a bf16
// block the bf16 images of the Q rows, K, P and V tiles (pairs in 32-bit words).
size_t attention_scratch_floats(const AttentionParams& p);

// ---------------------------------------------------------------------------
// Planning (attention_plan.cc): ISA-independent.

// Shapes as the op receives them; empty mask shape and has_mask false: no mask.
struct AttentionShapes {
  std::vector<int64_t> q, k, v, mask;
  bool has_mask;
  bool k_transposed;
};

// The broadcast of one call: Y's shape, the matrix sizes, and for every output
// head (leading dims flattened, row-major) the element offsets of its Q, K,
// V and mask matrices.
struct AttentionLayout {
  std::vector<int64_t> out_shape;
  size_t sq = 0, skv = 0, d = 0, dv = 0;
  size_t mask_row_stride = 0;
  bool mask_col_broadcast = false;
  std::vector<size_t> q_off, k_off, v_off, mask_off;
};

// Fills `layout`; returns "" or what is wrong with the shapes (one sentence
// naming them). Axis -3 is the head axis: K's and V's heads must divide Q's
// (query head h uses key/value head h / (H / H_kv)); the mask's is 1 or Q's;
// every other leading axis broadcasts numpy-style.
std::string plan_attention_layout(const AttentionShapes& shapes, AttentionLayout* layout);

// Decode with grouped heads (Sq = 1, GQA/MQA): the G query heads that share a
// key/value head become the G query rows of one head of the layout, so every
// key tile is read once per group instead of once per query head (decode is
// bound by reading K and V). Applies when every group's Q rows and output rows
// are contiguous and its mask rows are one row or evenly spaced; returns
// whether it folded (sq becomes G, mask_row_stride the spacing; causal is a
// no-op at Sq = 1). Y's layout is unchanged: head h's row is row h.
bool fold_decode_groups(AttentionLayout* layout);

// Tile sizes for head dims d, dv from the caches (attention_plan.cc says why).
AttentionTiles choose_attention_tiles(const CacheSizes& caches, size_t sq, size_t skv, size_t d, size_t dv);

// The tasks of one call over `heads` output heads. Without a split, one task
// per (head, query block), heaviest first (causal blocks near the end of the
// sequence see the most keys). When there are fewer such blocks than
// `parallelism`, each block's keys are cut into `chunks` runs of whole tiles
// (flash-decoding): block b's chunk c is task b * chunks + c, it writes its
// partial rows to `partials`, and combine_attention_partials(b) finishes the
// block. Results depend on `parallelism` (the split), never on the threads
// that run the tasks.
struct AttentionTaskPlan {
  std::vector<AttentionTask> tasks;
  std::vector<float> partials;
  size_t chunks = 1;  // key chunks per query block (1: no split)
  size_t blocks = 0;  // (head, query block) pairs
};
void plan_attention_tasks(const AttentionParams& p, size_t heads, size_t parallelism, AttentionTaskPlan* plan);

// Packing key tiles once per call (AttentionPackFn), for the float32 block
// when Sq > bq: every key tile of each distinct (K, V) pair of the heads is
// packed in a pass of its own, which pays when each packed tile is then read
// kAttentionPackMinReads times or more on average (query blocks of its heads,
// causal blocks reading only the tiles up to their limit). Measured on Zen 4
// (H12 D64, 1 thread, against packing per product): 4 reads (S512) 1.06x,
// 2-3 reads (S256-S384) 1.00x, causal S384-S512 (2-2.7 reads) 0.94-0.98x,
// GQA 9/3 causal S512 (8 reads) 1.00x, 32/8 (10.7) 1.05x, causal S2048
// (8.5) 1.07x. The packed copy is as large as K and V (plus alignment), so
// calls whose copy would exceed kAttentionPackMaxBytes pack per product.
constexpr size_t kAttentionPackMinReads = 4;
constexpr size_t kAttentionPackMaxBytes = size_t{64} << 20;
struct AttentionPacking {
  std::vector<size_t> sources;  // per distinct (K, V): the first head that reads it
  std::vector<size_t> of_head;  // per head: its index in sources
  size_t tiles = 0;             // key tiles per source
  size_t source_floats = 0;     // packed K and V of one source
  size_t floats() const { return sources.size() * source_floats; }
};
// Decides and plans; on true sets p->packed (the scratch then grows:
// attention_scratch_floats). The caller provides floats() floats, 64-byte
// aligned, to attention_packing_assign, then runs the ISA's AttentionPackFn
// for every (source, tile) before any task.
bool plan_attention_packing(AttentionParams* p, const AttentionHead* heads, size_t n, AttentionPacking* pk);
// Points every head's packed_k / packed_v into `base`.
void attention_packing_assign(const AttentionParams& p, const AttentionPacking& pk, float* base, AttentionHead* heads,
                              size_t n);

// Writes Y of split block `block` from its chunks' (m, l, O): M = max m,
// Y = sum e^(m_c - M) O_c / sum e^(m_c - M) l_c (exact exponentials); rows
// that no chunk saw a live key for give 0, NaN rows stay NaN.
void combine_attention_partials(const AttentionParams& p, const AttentionHead* heads, const AttentionTaskPlan& plan,
                                size_t block);

}  // namespace quake
