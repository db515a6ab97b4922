// The bfloat16 tile products of com.quake Attention's precision "bfloat16" on
// AVX512-BF16 (Zen 4, Cooper Lake, Sapphire Rapids and later): operands
// rounded to bf16 (round to nearest even, NaN stays NaN), products exact in
// float32 and summed in float32 by VDPBF16PS, which multiplies a pair of bf16
// values of each operand and adds both products to a float32 lane. Included
// only by files built with -mavx512bf16 (attention_avx512bf16.cc and the
// benchmark benchmarks/attention_gemm_bf16.cc); every function has internal
// linkage (cmake/CheckIsaObjects.cmake).
//
// Layouts, in 32-bit words each holding a pair of bf16 values (low half first):
//   A (the broadcast operand, Q or P): rows of `pairs` words, A[r][p] =
//     (a[r][2p], a[r][2p+1]); an odd reduction length pads the last pair with 0.
//   B (the vector operand, K^T or V): `pairs` rows of npad words, B[p][n] =
//     (b[2p][n], b[2p+1][n]) where b is [reduction x n]; npad is n rounded up
//     to 32 and the padding words are 0.
//   C = A B (or C += A B): rows x n floats, row stride ldc, written with masked
//     stores, so nothing past column n is touched.
// The micro-kernel holds an 8 x 32 block of C in 16 registers and, per pair of
// the reduction, loads two vectors of B and broadcasts one word of A per row.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace quake {
namespace {

constexpr size_t kBf16Mr = 8;   // rows of C per micro-kernel call
constexpr size_t kBf16Nr = 32;  // columns of C per micro-kernel call (two vectors)

inline size_t bf16_round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }

// Words of one packed B row for n columns.
inline size_t bf16_npad(size_t n) { return bf16_round_up(n, kBf16Nr); }

// Words of an A row (the row stride of bf16_pack_a and bf16_gemm's lda) for
// a reduction of `pairs` pairs.
inline size_t bf16_a_words(size_t pairs) { return pairs; }

// 16 floats to 16 bf16 (VCVTNEPS2BF16: round to nearest even, NaN -> quiet
// NaN, float32 denormals -> 0), as the low/high halves of 32-bit words later.
inline __m256i bf16_from_floats(__m512 x) { return (__m256i)_mm512_cvtneps_pbh(x); }

inline __mmask16 bf16_tail_mask(size_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

// rows x cols floats (row stride ld) -> A rows of `pairs` words (2 pairs >= cols),
// the pad of an odd length set to 0.
inline void bf16_pack_a(const float* x, size_t rows, size_t cols, size_t ld, uint32_t* a, size_t pairs) {
  for (size_t r = 0; r < rows; ++r) {
    const float* in = x + r * ld;
    uint16_t* out = reinterpret_cast<uint16_t*>(a + r * pairs);
    size_t c = 0;
    for (; c + 16 <= cols; c += 16) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c), bf16_from_floats(_mm512_loadu_ps(in + c)));
    }
    if (c < cols) {
      const __mmask16 m = bf16_tail_mask(cols - c);
      _mm256_mask_storeu_epi16(out + c, m, bf16_from_floats(_mm512_maskz_loadu_ps(m, in + c)));
    }
    if (cols % 2) out[cols] = 0;
  }
}

// B from b = [kdim x n] floats (row stride ld): word (p, j) pairs rows 2p and
// 2p + 1 of column j. Two rows at a time: convert both, interleave.
inline void bf16_pack_b_rows(const float* b, size_t kdim, size_t n, size_t ld, uint32_t* bp) {
  const size_t npad = bf16_npad(n), pairs = (kdim + 1) / 2;
  // Interleave the 16 bf16 of row 2p (low 256 bits) with those of row 2p + 1.
  const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22,
                                              6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  for (size_t p = 0; p < pairs; ++p) {
    const float* lo = b + 2 * p * ld;
    const float* hi = 2 * p + 1 < kdim ? lo + ld : nullptr;
    uint32_t* out = bp + p * npad;
    size_t j = 0;
    for (; j < n; j += 16) {
      const __mmask16 m = bf16_tail_mask(n - j);
      const __m256i l = bf16_from_floats(_mm512_maskz_loadu_ps(m, lo + j));
      const __m256i h = hi ? bf16_from_floats(_mm512_maskz_loadu_ps(m, hi + j)) : _mm256_setzero_si256();
      const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(l), h, 1);
      _mm512_storeu_si512(out + j, _mm512_permutexvar_epi16(interleave, both));
    }
    for (; j < npad; j += 16) _mm512_storeu_si512(out + j, _mm512_setzero_si512());
  }
}

// Words of bf16_pack_b_cols' work memory for a reduction of kdim values.
inline size_t bf16_pack_cols_words(size_t kdim) { return 16 * bf16_round_up((kdim + 1) / 2, 16); }

// Transposes a 16 x 16 block of 32-bit words held in 16 registers.
inline void bf16_transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int h = 0; h < 16; h += 8) {
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_i32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_i32x4(r[h + i], r[h + i + 4], 0xdd);
    }
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
  }
}

// B from its transpose bt = [n x kdim] floats (row stride ld), e.g. K [keys x
// D] for S = Q K^T: word (p, j) is the pair (2p, 2p + 1) of row j. Per group
// of 16 rows: each row converted to words (in `work`, bf16_pack_cols_words
// words), then 16 x 16 blocks of words transposed into B's columns.
inline void bf16_pack_b_cols(const float* bt, size_t n, size_t kdim, size_t ld, uint32_t* bp, uint32_t* work) {
  const size_t npad = bf16_npad(n), pairs = (kdim + 1) / 2, stride = bf16_round_up(pairs, 16);
  for (size_t j0 = 0; j0 < npad; j0 += 16) {
    const size_t keys = j0 < n ? (n - j0 < 16 ? n - j0 : 16) : 0;
    for (size_t i = 0; i < 16; ++i) {
      uint32_t* w = work + i * stride;
      size_t p = 0;
      if (i < keys) {
        bf16_pack_a(bt + (j0 + i) * ld, 1, kdim, ld, w, pairs);
        p = pairs;
      }
      for (; p < stride; ++p) w[p] = 0;
    }
    for (size_t p0 = 0; p0 < pairs; p0 += 16) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(work + i * stride + p0);
      bf16_transpose16(r);
      for (size_t k = 0; k < 16 && p0 + k < pairs; ++k) _mm512_storeu_si512(bp + (p0 + k) * npad + j0, r[k]);
    }
  }
}

// C[MR rows x up to 32 columns] (+)= A B over `pairs` words; m0/m1 mask the
// two vectors' columns.
template <int MR, bool kAccumulate>
inline void bf16_micro(const uint32_t* a, size_t lda, const uint32_t* b, size_t npad, size_t pairs, float* c,
                       size_t ldc, __mmask16 m0, __mmask16 m1) {
  __m512 acc0[MR], acc1[MR];
  for (int r = 0; r < MR; ++r) {
    if (kAccumulate) {
      acc0[r] = _mm512_maskz_loadu_ps(m0, c + r * ldc);
      acc1[r] = _mm512_maskz_loadu_ps(m1, c + r * ldc + 16);
    } else {
      acc0[r] = _mm512_setzero_ps();
      acc1[r] = _mm512_setzero_ps();
    }
  }
  for (size_t p = 0; p < pairs; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + p * npad);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + p * npad + 16);
    for (int r = 0; r < MR; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r * lda + p]));
      acc0[r] = _mm512_dpbf16_ps(acc0[r], av, b0);
      acc1[r] = _mm512_dpbf16_ps(acc1[r], av, b1);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(c + r * ldc, m0, acc0[r]);
    if (m1) _mm512_mask_storeu_ps(c + r * ldc + 16, m1, acc1[r]);
  }
}

template <int MR, bool kAccumulate>
inline void bf16_row_block(const uint32_t* a, size_t lda, const uint32_t* bp, size_t npad, size_t pairs, float* c,
                           size_t ldc, size_t n) {
  for (size_t j = 0; j < n; j += kBf16Nr) {
    const size_t left = n - j;
    const __mmask16 m0 = bf16_tail_mask(left), m1 = left > 16 ? bf16_tail_mask(left - 16) : 0;
    bf16_micro<MR, kAccumulate>(a, lda, bp + j, npad, pairs, c + j, ldc, m0, m1);
  }
}

}  // namespace
}  // namespace quake

#include "attention_bf16_gemm.h"  // NOLINT(build/include_order): needs the row block above
