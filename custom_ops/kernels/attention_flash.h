// FlashAttention-2 forward of one task (attention.h: query rows [q0, q1) of
// one head against keys [k0, k1)), compiled once per ISA: attention_<isa>.cc
// defines QUAKE_ATTENTION_BLOCK (the function's name), for a float32 block
// QUAKE_ATTENTION_PACK (the name of its AttentionPackFn), and QUAKE_EIGEN (a
// namespace name for Eigen of its own, so no Eigen instantiation is shared
// between ISA objects: cmake/CheckIsaObjects.cmake), then includes this file.
// Eigen's GEMM then runs on that file's ISA flags. With QUAKE_ATTENTION_BF16
// defined to a header (attention_avx512bf16.cc, attention_neonbfmmla.cc,
// attention_neonbfdot.cc: precision "bfloat16") the two tile products are that
// header's bf16 micro-kernel (attention_bf16_avx512.h,
// attention_bf16_neon_bfmmla.h, attention_bf16_neon_bfdot.h): Q rows, K,
// P and V tiles rounded to bf16 (nearest even), products summed in float32;
// the scores, the online softmax and O stay float32, P is rounded only as the
// operand of P V (l sums the float32 P). Everything else is this file's.
//
// Per key tile of bk keys (Dao 2023, Algorithm 1 with the FA-2 loop order):
//   S = Q_block K_tile^T                              (Eigen GEMM)
//   online step: S <- scale S + M, causal limit, row max m, P = e^(S - m)
//                (the table's quake core), row sums l, rescale = e^(m_old - m)
//   O <- rescale O (only rows whose max grew) + P V_tile   (Eigen GEMM)
// then one division per row: Y = O / l. With p.packed the float32 products
// take K and V^T as packed once per call (pack_key_tile, run by the op layer
// before the tasks) and Q^T as packed once per task; only P is packed per
// tile (the same micro-kernel and operand layouts as Eigen's own products).
// Tiles entirely beyond the causal limit are never visited; on a tile the
// limit crosses, panels of kCausalPanelRows rows each multiply only the keys
// their last row sees; tiles whose mask is -inf for every row of the block
// are skipped before their GEMM. Error per
// element of Y: the core's relative error times max|V| (the weights' relative
// errors), plus float summation; Y of a row with no live key is 0; a NaN or
// +inf score makes the row NaN; NaN or inf in V reaches every row whose tile
// read it (as 0 * NaN in the unfused graph; a packed causal tile is read to
// the register panel past the limit, a diagonal panel's rows only to its
// last row's limit), but skipped tiles are never read.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#define Eigen QUAKE_EIGEN
#define EIGEN_DONT_PARALLELIZE  // tasks already run on ORT's pool
#define EIGEN_MPL2_ONLY
// The GEMM's packing buffers of a tile (up to ~200 KiB at the tiles chosen)
// go on the stack: from the heap, glibc returns them to the system at every
// free and each product faults its pages in again (measured 4 % of a
// S2048 run in clear_page). Pool threads have the system's default stack.
#define EIGEN_STACK_ALLOCATION_LIMIT (512 * 1024)
#include <Eigen/Core>
#undef Eigen

#include "attention.h"
#ifdef QUAKE_ATTENTION_BF16
#include QUAKE_ATTENTION_BF16  // the bf16 micro-kernel's header of this ISA
#endif

namespace quake {
namespace {

using RowMajor = QUAKE_EIGEN::Matrix<float, QUAKE_EIGEN::Dynamic, QUAKE_EIGEN::Dynamic, QUAKE_EIGEN::RowMajor>;
using Stride = QUAKE_EIGEN::OuterStride<>;
using ConstTile = QUAKE_EIGEN::Map<const RowMajor, QUAKE_EIGEN::Unaligned, Stride>;
using Tile = QUAKE_EIGEN::Map<RowMajor, QUAKE_EIGEN::Unaligned, Stride>;

constexpr uint16_t kHalfNegInf = 0xfc00u;

#ifndef QUAKE_ATTENTION_BF16  // the bf16 blocks multiply without Eigen
ConstTile const_tile(const float* p, size_t rows, size_t cols, size_t ld) {
  return ConstTile(p, static_cast<ptrdiff_t>(rows), static_cast<ptrdiff_t>(cols), Stride(static_cast<ptrdiff_t>(ld)));
}

// Eigen's GEMM in its three steps, for operands packed once and multiplied
// many times (p.packed): what Eigen's general_matrix_matrix_product does per
// call (pack the left operand, pack the right one, run the gebp micro-kernel)
// with the packing of K and V hoisted out of the query blocks and that of Q
// out of the key loop. Eigen's internal API (Eigen 3.4, GeneralBlockPanelKernel.h):
// the layouts are the ones its own products use on this file's ISA.
namespace gemm {
namespace ei = QUAKE_EIGEN::internal;
using Index = ptrdiff_t;
using Traits = ei::gebp_traits<float, float>;
template <int Order>
using Operand = ei::const_blas_data_mapper<float, Index, Order>;
using Result = ei::blas_data_mapper<float, Index, QUAKE_EIGEN::ColMajor, QUAKE_EIGEN::Unaligned, 1>;
constexpr int kRowMajor = QUAKE_EIGEN::RowMajor;
constexpr int kColMajor = QUAKE_EIGEN::ColMajor;

// The left operand A [rows x depth] (element (i, k) at a[i * ld + k] for
// RowMajor, a[k * ld + i] for ColMajor) into dst: rows * depth floats,
// dst 64-byte aligned (the micro-kernel loads it aligned).
template <int Order>
void pack_left(float* dst, const float* a, size_t ld, size_t depth, size_t rows) {
  ei::gemm_pack_lhs<float, Index, Operand<Order>, Traits::mr, Traits::LhsProgress, typename Traits::LhsPacket4Packing,
                    Order>
      pack;
  pack(dst, Operand<Order>(a, static_cast<Index>(ld)), static_cast<Index>(depth), static_cast<Index>(rows));
}

// The right operand B [depth x cols], column-major (element (k, j) at
// b[j * ld + k]), into dst: depth * cols floats.
void pack_right(float* dst, const float* b, size_t ld, size_t depth, size_t cols) {
  ei::gemm_pack_rhs<float, Index, Operand<kColMajor>, Traits::nr, kColMajor> pack;
  pack(dst, Operand<kColMajor>(b, static_cast<Index>(ld)), static_cast<Index>(depth), static_cast<Index>(cols));
}

// C [rows x cols], column-major with stride ldc, += A B from packed operands.
// A packed with a longer depth than used: a_depth (its panels start at row
// i * a_depth, and a prefix of each panel's depth is a valid shorter one).
void multiply_add(float* c, size_t ldc, const float* a, const float* b, size_t rows, size_t depth, size_t cols,
                  size_t a_depth = 0) {
  if (rows == 0 || cols == 0 || depth == 0) return;
  ei::gebp_kernel<float, float, Index, Result, Traits::mr, Traits::nr, false, false> gebp;
  gebp(Result(c, static_cast<Index>(ldc)), a, b, static_cast<Index>(rows), static_cast<Index>(depth),
       static_cast<Index>(cols), 1.0f, static_cast<Index>(a_depth ? a_depth : depth));
}

// The fewest leading rows, at least n, of a left operand packed with `rows`
// rows that form a packed operand by themselves: whole register panels
// (Traits::mr rows each) from the start, else all rows. Lets a causal block
// multiply only the keys its rows can see (to the panel) of a packed tile.
size_t packed_row_prefix(size_t n, size_t rows) {
  constexpr size_t mr = Traits::mr;
  const size_t whole = (n + mr - 1) / mr * mr;
  return whole <= rows / mr * mr ? whole : rows;
}

float* align64(float* p) {
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~static_cast<uintptr_t>(63));
}
}  // namespace gemm
#endif
Tile tile(float* p, size_t rows, size_t cols, size_t ld) {
  return Tile(p, static_cast<ptrdiff_t>(rows), static_cast<ptrdiff_t>(cols), Stride(static_cast<ptrdiff_t>(ld)));
}

// The task's work memory, carved as attention_scratch_floats counts it.
struct Scratch {
  float *s, *o, *m, *l, *rescale, *mask, *q, *k, *v;
  float *q_packed, *p_packed;  // p.packed: Q^T and P^T as right GEMM operands
  // bf16 blocks: words of bf16 pairs (attention_bf16_avx512.h's layouts, or
  // attention_bf16_neon_bfmmla.h's: rows and pairs rounded up to even).
  uint32_t *qa, *kb, *pa, *vb, *row;  // row: bf16_pack_b_cols' work (16 K rows)
};

Scratch carve(const AttentionParams& p, float* base) {
  const size_t bq = p.tiles.bq, bk = p.tiles.bk;
  Scratch w{};
  w.s = base;
  w.o = w.s + bq * bk;
  w.m = w.o + bq * p.dv;
  w.l = w.m + bq;
  w.rescale = w.l + bq;
  float* next = w.rescale + bq;
  if (p.half || p.mask_col_broadcast) {
    w.mask = next;
    next += bq * bk;
  }
  if (p.half) {
    w.q = next;
    w.k = w.q + bq * p.d;
    w.v = w.k + bk * p.d;
    next = w.v + bk * p.dv;
  }
#ifndef QUAKE_ATTENTION_BF16
  if (p.packed) {
    w.q_packed = gemm::align64(next);
    w.p_packed = w.q_packed + (bq * p.d + 15) / 16 * 16;
    next = w.p_packed + (bq * bk + 15) / 16 * 16;
  }
#endif
  if (p.bf16) {
    // As attention_scratch_floats counts them (attention_plan.cc).
    const size_t d_words = bf16_scratch_words(p.d), k_words = bf16_scratch_words(bk), rows = bf16_scratch_rows(bq);
    w.qa = reinterpret_cast<uint32_t*>(next);
    w.kb = w.qa + rows * d_words;
    w.pa = w.kb + d_words * bf16_scratch_panel(bk);
    w.vb = w.pa + rows * k_words;
    w.row = w.vb + k_words * bf16_scratch_panel(p.dv);
  }
  return w;
}

// Converts rows x cols halves (row stride ld) into contiguous floats.
void halves_to_floats(const AttentionParams& p, const uint16_t* x, size_t rows, size_t cols, size_t ld, float* y) {
  for (size_t r = 0; r < rows; ++r) p.f16_to_f32(x + r * ld, y + r * cols, cols);
}

// Keys [kb, kb + cols) of head.k as floats: K [cols x d] (row stride *ld),
// or with p.k_transposed K^T [d x cols] (row stride *ld); float16 tiles are
// converted into w_k, float tiles read in place.
const float* key_tile(const AttentionParams& p, const AttentionHead& head, size_t kb, size_t cols, float* w_k,
                      size_t* ld) {
  const size_t d = p.d, at = p.k_transposed ? kb : kb * d;
  *ld = p.k_transposed ? p.skv : d;
  if (!p.half) return static_cast<const float*>(head.k) + at;
  const uint16_t* kh = static_cast<const uint16_t*>(head.k) + at;
  if (p.k_transposed) {
    halves_to_floats(p, kh, d, cols, p.skv, w_k);
    *ld = cols;
  } else {
    halves_to_floats(p, kh, cols, d, d, w_k);
  }
  return w_k;
}

// Rows [kb, kb + cols) of head.v as floats, V [cols x dv] (row stride dv);
// float16 tiles converted into w_v.
const float* value_tile(const AttentionParams& p, const AttentionHead& head, size_t kb, size_t cols, float* w_v) {
  if (!p.half) return static_cast<const float*>(head.v) + kb * p.dv;
  halves_to_floats(p, static_cast<const uint16_t*>(head.v) + kb * p.dv, cols, p.dv, p.dv, w_v);
  return w_v;
}

// True when every mask value of the tile is -inf: the tile adds nothing to any
// of its rows and is skipped. Stops at the first other value, so a live tile
// costs one comparison.
bool mask_tile_dead(const AttentionParams& p, const void* mask, size_t q0, size_t rows, size_t k0, size_t cols) {
  const size_t check_rows = p.mask_row_stride == 0 ? 1 : rows;
  const size_t col_step = p.mask_col_broadcast ? 0 : 1;
  const size_t check_cols = p.mask_col_broadcast ? 1 : cols;
  for (size_t r = 0; r < check_rows; ++r) {
    const size_t at = (q0 + r) * p.mask_row_stride + k0 * col_step;
    if (p.half) {
      const uint16_t* row = static_cast<const uint16_t*>(mask) + at;
      for (size_t j = 0; j < check_cols; ++j) {
        if (row[j] != kHalfNegInf) return false;
      }
    } else {
      const float* row = static_cast<const float*>(mask) + at;
      for (size_t j = 0; j < check_cols; ++j) {
        if (row[j] != -std::numeric_limits<float>::infinity()) return false;
      }
    }
  }
  return true;
}

// float16 mask values as floats, float16's lowest (-65504, finfo(float16).min,
// what float16 exports mask with) read as float's lowest: in a float16 graph
// a score below 16 in magnitude plus -65504 rounds back to -65504 (float16's
// spacing there is 32), so a row masked by it everywhere is uniform (the mean
// of V), and so it stays in float arithmetic, where s - 65504 would keep the
// scores' differences (docs/ops.md, Attention).
inline void half_mask_to_float(const AttentionParams& p, const uint16_t* x, float* y, size_t n) {
  p.f16_to_f32(x, y, n);
  for (size_t j = 0; j < n; ++j) {
    if (y[j] == -65504.0f) y[j] = std::numeric_limits<float>::lowest();
  }
}

// The mask rows of a tile as the online step reads them: a pointer and a row
// stride (0: one row for all queries). float masks with a column per key are
// read in place; float16 masks and one-column masks are expanded into `buf`.
const float* mask_tile(const AttentionParams& p, const void* mask, size_t q0, size_t rows, size_t k0, size_t cols,
                       float* buf, size_t* ld) {
  if (mask == nullptr) {
    *ld = 0;
    return nullptr;
  }
  const size_t mask_rows = p.mask_row_stride == 0 ? 1 : rows;
  *ld = p.mask_row_stride == 0 ? 0 : p.tiles.bk;
  if (!p.half && !p.mask_col_broadcast) {
    *ld = p.mask_row_stride;
    return static_cast<const float*>(mask) + q0 * p.mask_row_stride + k0;
  }
  for (size_t r = 0; r < mask_rows; ++r) {
    float* out = buf + r * p.tiles.bk;
    const size_t at = (q0 + r) * p.mask_row_stride;
    if (p.mask_col_broadcast) {
      float value;
      if (p.half) {
        half_mask_to_float(p, static_cast<const uint16_t*>(mask) + at, &value, 1);
      } else {
        value = static_cast<const float*>(mask)[at];
      }
      for (size_t j = 0; j < cols; ++j) out[j] = value;
    } else {
      half_mask_to_float(p, static_cast<const uint16_t*>(mask) + at + k0, out, cols);
    }
  }
  return buf;
}

// Writes the task's rows: Y = O / l (0 for rows without a live key), or the
// partial (m, l, O) rows of a split task.
void finish_rows(const AttentionParams& p, const AttentionHead& head, const AttentionTask& t, const Scratch& w) {
  const size_t rows = t.q1 - t.q0, dv = p.dv;
  if (t.partial != nullptr) {
    for (size_t r = 0; r < rows; ++r) {
      float* out = t.partial + r * (dv + 2);
      out[0] = w.m[r];
      out[1] = w.l[r];
      std::memcpy(out + 2, w.o + r * dv, dv * sizeof(float));
    }
    return;
  }
  for (size_t r = 0; r < rows; ++r) {
    float* o = w.o + r * dv;
    if (w.l[r] == 0.0f) {
      for (size_t j = 0; j < dv; ++j) o[j] = 0.0f;
    } else {
      const float inv = 1.0f / w.l[r];  // NaN rows stay NaN
      for (size_t j = 0; j < dv; ++j) o[j] *= inv;
    }
    const size_t at = (t.q0 + r) * dv;
    if (p.half) {
      p.f32_to_f16(o, static_cast<uint16_t*>(head.out) + at, dv);
    } else {
      std::memcpy(static_cast<float*>(head.out) + at, o, dv * sizeof(float));
    }
  }
}

// Rows of a causal block's diagonal tile multiplied together: each panel of
// query rows against only the keys its last row sees, so the masked half of
// that tile is mostly not computed (a 128-row block over 128 keys does 62 %
// of the products instead of all). A multiple of 8: Eigen's packed Q^T is in
// panels of nr (4 or 8) query columns and the bf16 layouts take rows in pairs,
// so a panel's operands start where the block's do, at an offset.
constexpr size_t kCausalPanelRows = 32;

// One task's state: its parameters, scratch and Q rows (as floats).
struct Block {
  const AttentionParams& p;
  const AttentionHead& head;
  const AttentionTask& t;
  Scratch w;
  const float* q;  // the task's Q rows [rows() x d], float16 converted
  size_t rows() const { return t.q1 - t.q0; }
};

// Key tile [kb, kb + cols) as the products read it: float16 K and V converted,
// packed ones located, bf16 ones packed (once, whatever the row panels).
struct KeyTile {
  size_t kb, cols;
  size_t full;  // keys in the tile as packed once (p.packed)
  const float* k = nullptr;
  size_t k_ld = 0;
  const float* v = nullptr;
  const float* packed_k = nullptr;
  const float* packed_v = nullptr;
};

KeyTile load_key_tile(const Block& b, size_t kb, size_t cols) {
  const AttentionParams& p = b.p;
  KeyTile kt{kb, cols, std::min(p.tiles.bk, p.skv - kb)};
#ifdef QUAKE_ATTENTION_BF16
  if (p.d > 0) {
    const float* k = key_tile(p, b.head, kb, cols, b.w.k, &kt.k_ld);
    if (p.k_transposed) {
      bf16_pack_b_rows(k, p.d, cols, kt.k_ld, b.w.kb);  // K^T [d x cols]: pairs of rows
    } else {
      bf16_pack_b_cols(k, cols, p.d, kt.k_ld, b.w.kb, b.w.row);  // K [cols x d]: each row down a column
    }
  }
  bf16_pack_b_rows(value_tile(p, b.head, kb, cols, b.w.v), cols, p.dv, p.dv, b.w.vb);
#else
  if (p.packed) {
    kt.packed_k = b.head.packed_k + kb / p.tiles.bk * attention_packed_tile(p, p.d);
    kt.packed_v = b.head.packed_v + kb / p.tiles.bk * attention_packed_tile(p, p.dv);
  } else {
    kt.k = key_tile(p, b.head, kb, cols, b.w.k, &kt.k_ld);
    kt.v = value_tile(p, b.head, kb, cols, b.w.v);
  }
#endif
  return kt;
}

// Task rows [r0, r1) against the tile's first `cols` keys; diag is row r0's
// causal offset (live_columns). Every key past a row's limit is masked by the
// online step, so `cols` only needs to reach the last row's.
//   S = Q K^T; online step (scale, mask, limit, max, P = e^(S - m), l);
//   O = rescale O + P V.
void tile_rows(const Block& b, const KeyTile& kt, size_t r0, size_t r1, size_t cols, ptrdiff_t diag, bool first) {
  const AttentionParams& p = b.p;
  const Scratch& w = b.w;
  const size_t rows = r1 - r0, d = p.d, dv = p.dv, bk = p.tiles.bk;
  float* s = w.s + r0 * bk;
  float* o = w.o + r0 * dv;
#ifdef QUAKE_ATTENTION_BF16
  // The bf16 V panel's layout is fixed by the tile's keys: P V runs over all
  // of them, P being 0 past each row's limit.
  const size_t step_cols = kt.cols;
#else
  // A packed tile is multiplied to the end of the register panel that holds
  // the limit (packed_row_prefix).
  if (p.packed) cols = gemm::packed_row_prefix(cols, kt.full);
  const size_t step_cols = cols;
#endif

  // S = Q K^T
  if (d == 0) {
    tile(s, rows, cols, bk).setZero();
  } else {
#ifdef QUAKE_ATTENTION_BF16
    const size_t d_words = bf16_a_words((d + 1) / 2);
    bf16_gemm<false>(w.qa + r0 * d_words, d_words, w.kb, (d + 1) / 2, s, bk, rows, cols, bf16_npad(kt.cols));
#else
    if (p.packed) {  // S^T [cols x rows] (S's rows, column-major) = K Q^T
      for (size_t r = 0; r < rows; ++r) std::memset(s + r * bk, 0, cols * sizeof(float));
      gemm::multiply_add(s, bk, kt.packed_k, w.q_packed + r0 * d, cols, d, rows);
    } else if (p.k_transposed) {
      tile(s, rows, cols, bk).noalias() = const_tile(b.q + r0 * d, rows, d, d) * const_tile(kt.k, d, cols, kt.k_ld);
    } else {
      tile(s, rows, cols, bk).noalias() =
          const_tile(b.q + r0 * d, rows, d, d) * const_tile(kt.k, cols, d, kt.k_ld).transpose();
    }
#endif
  }

  size_t mask_ld = 0;
  const float* mask = mask_tile(p, b.head.mask, b.t.q0 + r0, rows, kt.kb, step_cols, w.mask, &mask_ld);
  p.online_softmax(s, bk, rows, step_cols, diag, p.scale, mask, mask_ld, w.m + r0, w.l + r0, w.rescale + r0);

  // O = rescale O + P V; rows whose max did not grow keep their scale.
  Tile o_rows = tile(o, rows, dv, dv);
  if (!first) {
    for (size_t r = 0; r < rows; ++r) {
      if (w.rescale[r0 + r] != 1.0f) o_rows.row(static_cast<ptrdiff_t>(r)) *= w.rescale[r0 + r];
    }
  }
#ifdef QUAKE_ATTENTION_BF16
  // P rounded to bf16 here only (l above summed the float32 P).
  const size_t k_pairs = (step_cols + 1) / 2, k_words = bf16_a_words(k_pairs);
  bf16_pack_a(s, rows, step_cols, bk, w.pa, k_words);
  bf16_gemm<true>(w.pa, k_words, w.vb, k_pairs, o, dv, rows, dv, bf16_npad(dv));
#else
  if (p.packed) {  // O^T [dv x rows] += V^T P^T
    gemm::pack_right(w.p_packed, s, bk, cols, rows);
    gemm::multiply_add(o, dv, kt.packed_v, w.p_packed, dv, cols, rows, kt.full);
  } else {
    o_rows.noalias() += const_tile(s, rows, cols, bk) * const_tile(kt.v, cols, dv, dv);
  }
#endif
}

// The tile's rows: in one step where every row sees all `cols` keys (or no
// causal limit applies), else the rows that see only part of the tile in
// panels of kCausalPanelRows (panels that see none of it skipped) and the
// rest in one step.
void tile_all_rows(const Block& b, const KeyTile& kt, ptrdiff_t diag, bool first) {
  size_t r0 = 0;
  if (b.p.causal) {
    for (; r0 < b.rows() && live_columns(r0, kt.cols, diag) < kt.cols; r0 += kCausalPanelRows) {
      const size_t r1 = std::min(b.rows(), r0 + kCausalPanelRows);
      const size_t cols = live_columns(r1 - 1, kt.cols, diag);
      if (cols > 0) tile_rows(b, kt, r0, r1, cols, diag + static_cast<ptrdiff_t>(r0), first);
    }
  }
  if (r0 < b.rows()) tile_rows(b, kt, r0, b.rows(), kt.cols, diag + static_cast<ptrdiff_t>(r0), first);
}

void flash_attention_block(const AttentionParams& p, const AttentionHead& head, const AttentionTask& t,
                           float* scratch) {
  const size_t rows = t.q1 - t.q0, d = p.d, bk = p.tiles.bk;
  const Scratch w = carve(p, scratch);
  for (size_t r = 0; r < rows; ++r) {
    w.m[r] = -std::numeric_limits<float>::infinity();
    w.l[r] = 0.0f;
  }
  tile(w.o, rows, p.dv, p.dv).setZero();

  // The causal limit: query i sees keys j <= i + (skv - sq); the block's last
  // row sees the most.
  size_t k_end = t.k1;
  if (p.causal) {
    const ptrdiff_t last = static_cast<ptrdiff_t>(t.q1) + static_cast<ptrdiff_t>(p.skv) - static_cast<ptrdiff_t>(p.sq);
    k_end = last <= static_cast<ptrdiff_t>(t.k0) ? t.k0 : std::min(t.k1, static_cast<size_t>(last));
  }

  const float* q = p.half ? w.q : static_cast<const float*>(head.q) + t.q0 * d;
  if (p.half && k_end > t.k0) halves_to_floats(p, static_cast<const uint16_t*>(head.q) + t.q0 * d, rows, d, d, w.q);
#ifdef QUAKE_ATTENTION_BF16
  if (k_end > t.k0) bf16_pack_a(q, rows, d, d, w.qa, bf16_a_words((d + 1) / 2));
#else
  if (p.packed && k_end > t.k0) gemm::pack_right(w.q_packed, q, d, d, rows);  // Q^T [d x rows]
#endif
  const Block b{p, head, t, w, q};

  bool first = true;
  for (size_t kb = t.k0; kb < k_end; kb += bk) {
    const size_t cols = std::min(bk, k_end - kb);
    if (head.mask != nullptr && mask_tile_dead(p, head.mask, t.q0, rows, kb, cols)) continue;
    const ptrdiff_t diag =
        p.causal ? static_cast<ptrdiff_t>(t.q0 + p.skv) - static_cast<ptrdiff_t>(p.sq) - static_cast<ptrdiff_t>(kb)
                 : static_cast<ptrdiff_t>(cols);
    tile_all_rows(b, load_key_tile(b, kb, cols), diag, first);
    first = false;
  }
  finish_rows(p, head, t, w);
}

#ifdef QUAKE_ATTENTION_PACK
void pack_key_tile(const AttentionParams& p, const AttentionHead& head, size_t tile, float* scratch) {
  const size_t bk = p.tiles.bk, kb = tile * bk, cols = std::min(bk, p.skv - kb), d = p.d, dv = p.dv;
  const Scratch w = carve(p, scratch);
  if (d > 0) {  // K [cols x d], the left operand of S^T = K Q^T
    float* dst = head.packed_k + tile * attention_packed_tile(p, d);
    size_t ld = 0;
    const float* k = key_tile(p, head, kb, cols, w.k, &ld);
    if (p.k_transposed) {  // K^T [d x cols]: K column-major
      gemm::pack_left<gemm::kColMajor>(dst, k, ld, d, cols);
    } else {
      gemm::pack_left<gemm::kRowMajor>(dst, k, ld, d, cols);
    }
  }
  if (dv > 0) {  // V^T [dv x cols] (V's rows, column-major), the left operand of O^T += V^T P^T
    const float* v = value_tile(p, head, kb, cols, w.v);
    gemm::pack_left<gemm::kColMajor>(head.packed_v + tile * attention_packed_tile(p, dv), v, dv, cols, dv);
  }
}
#endif

}  // namespace

#ifdef QUAKE_ATTENTION_PACK
void QUAKE_ATTENTION_PACK(const AttentionParams& p, const AttentionHead& head, size_t tile, float* scratch) {
  pack_key_tile(p, head, tile, scratch);
}
#endif

void QUAKE_ATTENTION_BLOCK(const AttentionParams& p, const AttentionHead& head, const AttentionTask& task,
                           float* scratch) {
  flash_attention_block(p, head, task, scratch);
}

}  // namespace quake
