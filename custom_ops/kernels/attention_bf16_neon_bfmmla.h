// The BFMMLA engine ("NEON BFMMLA", the default where FEAT_BF16 is) of
// com.quake Attention's precision "bfloat16" on AArch64: the functions of
// attention_bf16_avx512.h (bf16_pack_a, bf16_pack_b_rows, bf16_pack_b_cols,
// bf16_row_block for the shared driver attention_bf16_gemm.h) over the
// layout BFMMLA needs. Included only by attention_neonbfmmla.cc, built with
// -march=armv8.2-a+bf16; every function has internal linkage.
//
// Algorithm: C = A B (or C += A B) with A and B rounded to bf16 by the shared
// attention_bf16_neon.h (the same rounding as the BFDOT engine). BFMMLA
// multiplies a 2 x 4 block of bf16 (two rows of A, four consecutive values of
// the reduction) by a 4 x 2 block (the same four values of two columns of B)
// into a 2 x 2 float32 tile: 16 multiply-adds per instruction, twice BFDOT's 8.
//
// Layout: the reduction in quads of 4 values, quads = ceil(pairs / 2); each
// row of A and each column of B is `words` = 2 quads 32-bit words, taken in
// pairs of rows (of columns), interleaved by quad:
//   A: rows 2g, 2g + 1 from word 2g x words on; per quad q the 8 bf16
//      a[2g][4q..4q+3], a[2g+1][4q..4q+3] (one BFMMLA operand, 4 words);
//   B: columns 2h, 2h + 1 from word 2h x words on, the same way, so the B
//      operand of quad q holds b[4q..4q+3][2h], b[4q..4q+3][2h+1].
// Reduction values past the length are 0 in both operands; A's odd last row
// and B's columns up to a multiple of 8 (the micro-kernel's width) are 0, so
// the micro-kernel never reads memory the packers did not write. The scratch
// holds round_up(rows, 2) x words words for A and npad x words for B
// (attention_scratch_floats).
// Micro-kernel: 8 rows x 8 columns of C as 16 tiles of 2 x 2 in 16 registers;
// per quad 4 A loads, 4 B loads, 16 BFMMLA (the BFDOT kernel: 16 loads, 64
// BFDOT per 4 pairs; the same bytes loaded per multiply-add).
//
// Range and error: per element, BFMMLA is "two 2-way unfused dot products"
// (Arm ARM, BFMMLA, FEAT_EBF16 absent or FPCR.EBF = 0 as Linux leaves it):
// values 4q, 4q + 1 then 4q + 2, 4q + 3, each step the products exact, their
// sum and the accumulation rounded to odd, exactly the steps BFDOT takes over
// the same pairs in the same order. So the result equals the BFDOT engine's
// bit for bit (test_attention checks it under qemu) and has its bound: within
// d 2^-23 A (A = sum of |products|) of the exact sum of the rounded
// operands' products; docs/ops.md, "Error of precision bfloat16", bounds Y.
// NaN or +-inf in an operand gives NaN or +-inf in the elements that read it
// (NaN for inf - inf and 0 x inf); the zero padding meets input values only
// in elements that are never stored (padded rows and columns), and padding
// in the reduction meets padding. bf16 denormal inputs count as 0.
// Sources: Arm Architecture Reference Manual, BFMMLA; the throughput that
// makes it the default: Arm Neoverse N2, V1 and V2 Software Optimization
// Guides (as encoded in LLVM's AArch64SchedNeoverse{N2,V1,V2}.td): ASIMD
// BFMMLA and BFDOT are each one micro-op on any FP/ASIMD pipe (2 on N2, 4 on
// V1 and V2), latency 5 and 4 (6 and 5 on V2), so BFMMLA's 16 multiply-adds
// come at BFDOT's rate of 8. Not timed: tested under qemu only.
#pragma once

#include <arm_neon.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "attention_bf16_neon.h"

namespace quake {
namespace {

constexpr size_t kBf16Mr = 8;  // rows of C per micro-kernel call (4 row pairs)
constexpr size_t kBf16Nr = 8;  // columns of C per micro-kernel call (4 column pairs)

// Words of an A row (and of a B column) for a reduction of `pairs` pairs:
// whole quads.
inline size_t bf16_a_words(size_t pairs) { return bf16_round_up(pairs, 2); }

// Rows [0, rows) of x (cols floats each, row stride ld) in the interleaved
// layout with `words` words per row; rows [rows, padded_rows) set to 0.
inline void bf16_mmla_pack(const float* x, size_t rows, size_t cols, size_t ld, uint32_t* out, size_t words,
                           size_t padded_rows) {
  const size_t quads = words / 2;
  for (size_t r = 0; r < padded_rows; ++r) {
    // Row r's quad q: 4 bf16 (2 words) at out + (r & ~1) words + 4q + 2 (r & 1).
    uint16_t* base = reinterpret_cast<uint16_t*>(out + (r & ~static_cast<size_t>(1)) * words + 2 * (r & 1));
    if (r >= rows) {
      for (size_t q = 0; q < quads; ++q) vst1_u16(base + 8 * q, vdup_n_u16(0));
      continue;
    }
    const float* in = x + r * ld;
    size_t q = 0;
    for (; 4 * q + 4 <= cols; ++q) vst1_u16(base + 8 * q, bf16_from_floats(vld1q_f32(in + 4 * q)));
    if (4 * q < cols) {
      uint16_t last[4] = {0, 0, 0, 0};
      bf16_convert(in + 4 * q, cols - 4 * q, last);
      vst1_u16(base + 8 * q, vld1_u16(last));
      ++q;
    }
    for (; q < quads; ++q) vst1_u16(base + 8 * q, vdup_n_u16(0));
  }
}

// rows x cols floats (row stride ld) -> A with `words` (bf16_a_words) words
// per row, rows padded to pairs.
inline void bf16_pack_a(const float* x, size_t rows, size_t cols, size_t ld, uint32_t* a, size_t words) {
  bf16_mmla_pack(x, rows, cols, ld, a, words, bf16_round_up(rows, 2));
}

// B from its transpose bt = [n x kdim] floats (row stride ld), e.g. K [keys x
// D] for S = Q K^T: column j of B is row j of bt, whose quads are consecutive
// floats, so B packs as A does. `work` (the BFDOT/AVX-512 transpose buffer) is
// not needed.
inline void bf16_pack_b_cols(const float* bt, size_t n, size_t kdim, size_t ld, uint32_t* bp, uint32_t* /*work*/) {
  bf16_mmla_pack(bt, n, kdim, ld, bp, bf16_a_words((kdim + 1) / 2), bf16_round_up(n, kBf16Nr));
}

// B from b = [kdim x n] floats (row stride ld), e.g. V [keys x Dv]: per quad
// of rows, 4 columns at a time, the four rows' bf16 transposed so each column
// holds its 4 values of the quad (two column pairs: two 16-byte stores).
inline void bf16_pack_b_rows(const float* b, size_t kdim, size_t n, size_t ld, uint32_t* bp) {
  const size_t words = bf16_a_words((kdim + 1) / 2), quads = words / 2, ncols = bf16_round_up(n, kBf16Nr);
  for (size_t q = 0; q < quads; ++q) {
    const float* row[4];
    for (size_t i = 0; i < 4; ++i) row[i] = 4 * q + i < kdim ? b + (4 * q + i) * ld : nullptr;
    size_t j = 0;
    for (; j + 4 <= n; j += 4) {
      uint16x4_t v[4];
      for (size_t i = 0; i < 4; ++i) v[i] = row[i] ? bf16_from_floats(vld1q_f32(row[i] + j)) : vdup_n_u16(0);
      // v[i] = rows 4q + i of columns j..j+3 -> column c = (v0[c], v1[c], v2[c], v3[c]).
      const uint32x2_t z01a = vreinterpret_u32_u16(vzip1_u16(v[0], v[1]));  // (r0 r1)[j], (r0 r1)[j+1]
      const uint32x2_t z01b = vreinterpret_u32_u16(vzip2_u16(v[0], v[1]));  // (r0 r1)[j+2], (r0 r1)[j+3]
      const uint32x2_t z23a = vreinterpret_u32_u16(vzip1_u16(v[2], v[3]));
      const uint32x2_t z23b = vreinterpret_u32_u16(vzip2_u16(v[2], v[3]));
      const uint32x4_t c01 = vcombine_u32(vzip1_u32(z01a, z23a), vzip2_u32(z01a, z23a));
      const uint32x4_t c23 = vcombine_u32(vzip1_u32(z01b, z23b), vzip2_u32(z01b, z23b));
      vst1q_u32(bp + j * words + 4 * q, c01);  // j is even: the pair (j, j + 1)
      vst1q_u32(bp + (j + 2) * words + 4 * q, c23);
    }
    for (; j < ncols; ++j) {
      uint16_t* out = reinterpret_cast<uint16_t*>(bp + (j & ~static_cast<size_t>(1)) * words + 4 * q + 2 * (j & 1));
      for (size_t i = 0; i < 4; ++i) out[i] = j < n && row[i] ? bf16_bits(row[i][j]) : 0;
    }
  }
}

// C[MR rows x cols (<= 8)] (+)= A B over `quads` quads: a at the block's
// first row (even), b at its first column (even), `words` per row/column.
template <int MR, bool kAccumulate>
inline void bf16_micro(const uint32_t* a, const uint32_t* b, size_t words, size_t quads, float* c, size_t ldc,
                       size_t cols) {
  constexpr int kPairs = (MR + 1) / 2;
  float32x4_t acc[kPairs][4];  // tile (g, h): rows 2g, 2g + 1 x columns 2h, 2h + 1, row-major
  const bool full = cols == kBf16Nr && MR % 2 == 0;
  float tmp[2 * kPairs][kBf16Nr];
  const float* in = c;
  size_t ld_in = ldc;
  if (kAccumulate && !full) {
    for (int r = 0; r < 2 * kPairs; ++r) {
      for (size_t j = 0; j < kBf16Nr; ++j) tmp[r][j] = r < MR && j < cols ? c[r * ldc + j] : 0.0f;
    }
    in = tmp[0];
    ld_in = kBf16Nr;
  }
  for (int g = 0; g < kPairs; ++g) {
    for (int h = 0; h < 4; ++h) {
      acc[g][h] = kAccumulate
                      ? vcombine_f32(vld1_f32(in + 2 * g * ld_in + 2 * h), vld1_f32(in + (2 * g + 1) * ld_in + 2 * h))
                      : vdupq_n_f32(0.0f);
    }
  }
  for (size_t q = 0; q < quads; ++q) {
    bfloat16x8_t av[kPairs], bv[4];
    for (int g = 0; g < kPairs; ++g) av[g] = vreinterpretq_bf16_u32(vld1q_u32(a + 2 * g * words + 4 * q));
    for (int h = 0; h < 4; ++h) bv[h] = vreinterpretq_bf16_u32(vld1q_u32(b + 2 * h * words + 4 * q));
    for (int g = 0; g < kPairs; ++g) {
      for (int h = 0; h < 4; ++h) acc[g][h] = vbfmmlaq_f32(acc[g][h], av[g], bv[h]);
    }
  }
  float* out = full ? c : tmp[0];
  const size_t ld_out = full ? ldc : kBf16Nr;
  for (int g = 0; g < kPairs; ++g) {
    for (int h = 0; h < 4; ++h) {
      vst1_f32(out + 2 * g * ld_out + 2 * h, vget_low_f32(acc[g][h]));
      vst1_f32(out + (2 * g + 1) * ld_out + 2 * h, vget_high_f32(acc[g][h]));
    }
  }
  if (!full) {
    for (int r = 0; r < MR; ++r) std::memcpy(c + r * ldc, tmp[r], cols * sizeof(float));
  }
}

// All columns of MR rows. lda (bf16_gemm's step per row of A) is `words`,
// and npad (the BFDOT/AVX-512 row stride of B) is not used: B's columns are
// `words` apart.
template <int MR, bool kAccumulate>
inline void bf16_row_block(const uint32_t* a, size_t /*lda*/, const uint32_t* bp, size_t /*npad*/, size_t pairs,
                           float* c, size_t ldc, size_t n) {
  const size_t words = bf16_a_words(pairs), quads = words / 2;
  for (size_t j = 0; j < n; j += kBf16Nr) {
    bf16_micro<MR, kAccumulate>(a, bp + j * words, words, quads, c + j, ldc, n - j < kBf16Nr ? n - j : kBf16Nr);
  }
}

}  // namespace
}  // namespace quake

#include "attention_bf16_gemm.h"  // NOLINT(build/include_order): needs the row block above
