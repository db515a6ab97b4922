// What the two NEON bf16 engines of com.quake Attention's precision
// "bfloat16" share (AArch64 with FEAT_BF16): the rounding of float32 operands
// to bf16 and the padding of the packed panels. Included by
// attention_bf16_neon_bfdot.h (BFDOT) and attention_bf16_neon_bfmmla.h
// (BFMMLA), which define the layouts and micro-kernels; only one of them per
// translation unit, each built with -march=armv8.2-a+bf16. Every function has
// internal linkage.
//
// Rounding: BFCVT / BFCVTN (vcvth_bf16_f32, vcvt_bf16_f32): round to nearest
// even under Linux's default FPCR (RMode 0), as VCVTNEPS2BF16 on x86 and the
// tests' emulation; NaN stays NaN; +-inf stays +-inf. A denormal operand adds
// 0 to the products either way: BFDOT and BFMMLA flush bf16 denormal inputs
// to zero (Arm ARM, FEAT_BF16 without FPCR.EBF). Both engines round every
// operand with exactly these functions, so they see the same bf16 inputs.
#pragma once

#include <arm_neon.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace quake {
namespace {

inline size_t bf16_round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }

// Words of one packed B row (BFDOT) or columns of a packed B panel (BFMMLA)
// for n columns: padded as the AVX-512 layout, to 32 (attention.h's
// kBf16PanelColumns sizes the scratch).
inline size_t bf16_npad(size_t n) { return bf16_round_up(n, 32); }

inline uint16_t bf16_bits(float x) {
  const bfloat16_t b = vcvth_bf16_f32(x);
  uint16_t u;
  std::memcpy(&u, &b, sizeof u);
  return u;
}

inline uint16x4_t bf16_from_floats(float32x4_t x) { return vreinterpret_u16_bf16(vcvt_bf16_f32(x)); }

// n floats -> n bf16 (4 at a time, then one by one).
inline void bf16_convert(const float* in, size_t n, uint16_t* out) {
  size_t c = 0;
  for (; c + 4 <= n; c += 4) vst1_u16(out + c, bf16_from_floats(vld1q_f32(in + c)));
  for (; c < n; ++c) out[c] = bf16_bits(in[c]);
}

}  // namespace
}  // namespace quake
