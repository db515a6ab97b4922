// The bf16 tile product C = A B (or C += A B) over a per-ISA row block:
// rows of C in blocks of kBf16Mr, the last block of 1..kBf16Mr-1 rows with
// the row block instantiated for exactly that many. Included at the end of
// attention_bf16_avx512.h and attention_bf16_neon.h, which define kBf16Mr,
// bf16_npad and bf16_row_block<MR, kAccumulate> (all columns of MR rows)
// for their ISA (internal linkage: one instantiation per ISA file).
#pragma once

#include <cstddef>
#include <cstdint>

namespace quake {
namespace {

// The last `rows` (< kBf16Mr) rows, with the micro-kernel of that height.
template <int MR, bool kAccumulate>
inline void bf16_row_tail(size_t rows, const uint32_t* a, size_t lda, const uint32_t* bp, size_t npad, size_t pairs,
                          float* c, size_t ldc, size_t n) {
  if (rows == MR) {
    bf16_row_block<MR, kAccumulate>(a, lda, bp, npad, pairs, c, ldc, n);
  } else if constexpr (MR > 1) {
    bf16_row_tail<MR - 1, kAccumulate>(rows, a, lda, bp, npad, pairs, c, ldc, n);
  }
}

// C [rows x n] (row stride ldc) = A B, or += A B when kAccumulate; A rows of
// lda words (the first `pairs` used), B packed for n columns, or for more
// (its first n used) when npad is that packing's bf16_npad.
template <bool kAccumulate>
inline void bf16_gemm(const uint32_t* a, size_t lda, const uint32_t* bp, size_t pairs, float* c, size_t ldc,
                      size_t rows, size_t n, size_t npad) {
  size_t r = 0;
  for (; r + kBf16Mr <= rows; r += kBf16Mr) {
    bf16_row_block<kBf16Mr, kAccumulate>(a + r * lda, lda, bp, npad, pairs, c + r * ldc, ldc, n);
  }
  bf16_row_tail<kBf16Mr - 1, kAccumulate>(rows - r, a + r * lda, lda, bp, npad, pairs, c + r * ldc, ldc, n);
}

}  // namespace
}  // namespace quake
