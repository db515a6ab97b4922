// The BFDOT engine ("NEON BFDOT") of com.quake Attention's precision
// "bfloat16" on AArch64 with FEAT_BF16 (Neoverse V1/N2/V2, Graviton 3/4,
// Apple M2 and later): the layouts and functions of attention_bf16_avx512.h
// (read that file first), with BFDOT in place of VDPBF16PS. Included only by
// attention_neonbfdot.cc, built with -march=armv8.2-a+bf16; every function
// has internal linkage. The default engine is BFMMLA
// (attention_bf16_neon_bfmmla.h); QUAKE_NEON_BF16=bfdot selects this one
// (dispatch.cc).
//
// Algorithm: C = A B (or C += A B) with A and B rounded to bf16 by the shared
// attention_bf16_neon.h; BFDOT multiplies a pair of bf16 values of each
// operand and adds both products to a float32 lane, so the pairs of the
// reduction of the AVX-512 layout serve unchanged: A rows of `pairs` words
// (word p = values 2p, 2p + 1), B `pairs` rows of npad words (word (p, j) =
// rows 2p, 2p + 1 of column j), an odd reduction length padded with 0.
// Micro-kernel: 8 rows x 8 columns of C in 16 registers; per 4 pairs of the
// reduction one 128-bit load of each A row, two of each B row, BFDOT by lane.
//
// Range and error: products of bf16 values are exact in float32; each BFDOT
// adds its two products and the accumulator with round-to-odd (FEAT_BF16
// without FPCR.EBF, Linux's default), so each element is the float32 sum of
// the rounded operands' products within d 2^-23 A (A = sum of |products|) of
// the exact one; overflow gives +-inf. docs/ops.md, "Error of precision
// bfloat16", bounds Y. NaN or +-inf in an operand gives NaN or +-inf in the
// elements that read it (NaN for inf - inf and 0 x inf); bf16 denormal
// inputs count as 0.
// Source: Arm Architecture Reference Manual, BFDOT (vector, by element).
#pragma once

#include <arm_neon.h>

#include <cstddef>
#include <cstdint>

#include "attention_bf16_neon.h"

namespace quake {
namespace {

constexpr size_t kBf16Mr = 8;  // rows of C per micro-kernel call
constexpr size_t kBf16Nr = 8;  // columns of C per micro-kernel call (two vectors)

// Words of an A row (the row stride of bf16_pack_a and bf16_gemm's lda) for
// a reduction of `pairs` pairs.
inline size_t bf16_a_words(size_t pairs) { return pairs; }

// rows x cols floats (row stride ld) -> A rows of `pairs` words, the pad of an
// odd length set to 0.
inline void bf16_pack_a(const float* x, size_t rows, size_t cols, size_t ld, uint32_t* a, size_t pairs) {
  for (size_t r = 0; r < rows; ++r) {
    const float* in = x + r * ld;
    uint16_t* out = reinterpret_cast<uint16_t*>(a + r * pairs);
    bf16_convert(in, cols, out);
    if (cols % 2) out[cols] = 0;
  }
}

// B from b = [kdim x n] floats (row stride ld): word (p, j) pairs rows 2p and
// 2p + 1 of column j (zipped bf16 halves).
inline void bf16_pack_b_rows(const float* b, size_t kdim, size_t n, size_t ld, uint32_t* bp) {
  const size_t npad = bf16_npad(n), pairs = (kdim + 1) / 2;
  for (size_t p = 0; p < pairs; ++p) {
    const float* lo = b + 2 * p * ld;
    const float* hi = 2 * p + 1 < kdim ? lo + ld : nullptr;
    uint32_t* out = bp + p * npad;
    size_t j = 0;
    for (; j + 4 <= n; j += 4) {
      const uint16x4_t l = bf16_from_floats(vld1q_f32(lo + j));
      const uint16x4_t h = hi ? bf16_from_floats(vld1q_f32(hi + j)) : vdup_n_u16(0);
      vst1q_u16(reinterpret_cast<uint16_t*>(out + j), vcombine_u16(vzip1_u16(l, h), vzip2_u16(l, h)));
    }
    for (; j < n; ++j) {
      out[j] = bf16_bits(lo[j]) | (hi ? static_cast<uint32_t>(bf16_bits(hi[j])) << 16 : 0u);
    }
    for (; j < npad; ++j) out[j] = 0;
  }
}

// Words of bf16_pack_b_cols' work memory for a reduction of kdim values (as
// the AVX-512 header's, which the scratch is sized for; one row is used here).
inline size_t bf16_pack_cols_words(size_t kdim) { return 16 * bf16_round_up((kdim + 1) / 2, 16); }

// B from its transpose bt = [n x kdim] floats (row stride ld): each row
// converted to words in `work`, its words sent down one column of B.
inline void bf16_pack_b_cols(const float* bt, size_t n, size_t kdim, size_t ld, uint32_t* bp, uint32_t* work) {
  const size_t npad = bf16_npad(n), pairs = (kdim + 1) / 2;
  for (size_t j = 0; j < n; ++j) {
    bf16_pack_a(bt + j * ld, 1, kdim, ld, work, pairs);
    for (size_t p = 0; p < pairs; ++p) bp[p * npad + j] = work[p];
  }
  for (size_t p = 0; p < pairs; ++p) {
    for (size_t j = n; j < npad; ++j) bp[p * npad + j] = 0;
  }
}

// C[MR rows x cols (<= 8)] (+)= A B over `pairs` words.
template <int MR, bool kAccumulate>
inline void bf16_micro(const uint32_t* a, size_t lda, const uint32_t* b, size_t npad, size_t pairs, float* c,
                       size_t ldc, size_t cols) {
  float32x4_t acc0[MR], acc1[MR];
  float tmp[MR][8];
  const bool full = cols == 8;
  for (int r = 0; r < MR; ++r) {
    if (kAccumulate) {
      const float* in = c + r * ldc;
      if (!full) {
        for (size_t j = 0; j < 8; ++j) tmp[r][j] = j < cols ? in[j] : 0.0f;
        in = tmp[r];
      }
      acc0[r] = vld1q_f32(in);
      acc1[r] = vld1q_f32(in + 4);
    } else {
      acc0[r] = vdupq_n_f32(0.0f);
      acc1[r] = vdupq_n_f32(0.0f);
    }
  }
  size_t p = 0;
  for (; p + 4 <= pairs; p += 4) {
    bfloat16x8_t av[MR];
    for (int r = 0; r < MR; ++r) av[r] = vreinterpretq_bf16_u32(vld1q_u32(a + r * lda + p));
#define QUAKE_BF16_STEP(k)                                                             \
  {                                                                                    \
    const bfloat16x8_t b0 = vreinterpretq_bf16_u32(vld1q_u32(b + (p + k) * npad));     \
    const bfloat16x8_t b1 = vreinterpretq_bf16_u32(vld1q_u32(b + (p + k) * npad + 4)); \
    for (int r = 0; r < MR; ++r) {                                                     \
      acc0[r] = vbfdotq_laneq_f32(acc0[r], b0, av[r], k);                              \
      acc1[r] = vbfdotq_laneq_f32(acc1[r], b1, av[r], k);                              \
    }                                                                                  \
  }
    QUAKE_BF16_STEP(0)
    QUAKE_BF16_STEP(1)
    QUAKE_BF16_STEP(2)
    QUAKE_BF16_STEP(3)
#undef QUAKE_BF16_STEP
  }
  for (; p < pairs; ++p) {
    const bfloat16x8_t b0 = vreinterpretq_bf16_u32(vld1q_u32(b + p * npad));
    const bfloat16x8_t b1 = vreinterpretq_bf16_u32(vld1q_u32(b + p * npad + 4));
    for (int r = 0; r < MR; ++r) {
      const bfloat16x8_t av = vreinterpretq_bf16_u32(vdupq_n_u32(a[r * lda + p]));
      acc0[r] = vbfdotq_f32(acc0[r], b0, av);
      acc1[r] = vbfdotq_f32(acc1[r], b1, av);
    }
  }
  for (int r = 0; r < MR; ++r) {
    float* out = c + r * ldc;
    if (full) {
      vst1q_f32(out, acc0[r]);
      vst1q_f32(out + 4, acc1[r]);
    } else {
      vst1q_f32(tmp[r], acc0[r]);
      vst1q_f32(tmp[r] + 4, acc1[r]);
      for (size_t j = 0; j < cols; ++j) out[j] = tmp[r][j];
    }
  }
}

template <int MR, bool kAccumulate>
inline void bf16_row_block(const uint32_t* a, size_t lda, const uint32_t* bp, size_t npad, size_t pairs, float* c,
                           size_t ldc, size_t n) {
  for (size_t j = 0; j < n; j += kBf16Nr) {
    bf16_micro<MR, kAccumulate>(a, lda, bp + j, npad, pairs, c + j, ldc, n - j < kBf16Nr ? n - j : kBf16Nr);
  }
}

}  // namespace
}  // namespace quake

#include "attention_bf16_gemm.h"  // NOLINT(build/include_order): needs the row block above
