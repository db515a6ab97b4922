// Scalar exponential core, shared by the scalar kernels and the SIMD tails.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "constants.h"

namespace quake {
namespace scalar {

inline float bits_to_float(int32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}
inline int32_t float_to_bits(float f) {
  int32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

// Schraudolph's float from a = 2^23 (t + 127 - shift), its bits raised to
// FLT_MIN's at least (constants.h).
inline float schraudolph(float a) {
  return bits_to_float(static_cast<int32_t>(std::nearbyint(a < kSchraudolphMinBits ? kSchraudolphMinBits : a)));
}

// 2^t with the mantissa polynomial of order 2 or 3, t = z log2(e) given;
// valid for -126 <= t < 128.
template <int Order>
inline float exp2_poly(float t) {
  const float fi = std::floor(t);
  const float f = t - fi;
  float p;
  if (Order == 2) {
    p = std::fma(std::fma(kExpPoly2[2], f, kExpPoly2[1]), f, kExpPoly2[0]);
  } else {
    p = std::fma(std::fma(std::fma(kExpPoly3[3], f, kExpPoly3[2]), f, kExpPoly3[1]), f, kExpPoly3[0]);
    p = p < kExpPoly3Floor ? kExpPoly3Floor : p;  // see constants.h; a NaN p stays NaN
  }
  // Adding i to the exponent field multiplies by 2^i.
  const uint32_t shifted = static_cast<uint32_t>(static_cast<int32_t>(fi)) << 23;
  return bits_to_float(static_cast<int32_t>(static_cast<uint32_t>(float_to_bits(p)) + shifted));
}

// e^z without range handling; valid for kExpUnderflow < z < kExpOverflow.
template <int Order>
inline float exp_core(float z) {
  if (Order == 1) return schraudolph(std::fma(z, kSchraudolphScale, kSchraudolphOffset));
  return exp2_poly<Order>(std::fma(z, kLog2e, kExpTBias));
}

// 2^t with the order's mantissa, valid for -126 <= t < 128: the base-2 terms
// of softmax_long.h (order 1: Schraudolph's bits of t directly).
template <int Order>
inline float exp2_core(float t) {
  if (Order == 1) return schraudolph(std::fma(t, 0x1p23f, kSchraudolphOffset));
  return exp2_poly<Order>(t);
}

// e^z with the full range contract of ops.md.
template <int Order>
inline float exp_quake(float z) {
  if (std::isnan(z)) return z;
  if (z <= kExpUnderflow) return 0.0f;
  if (z >= kExpOverflow) return INFINITY;
  return exp_core<Order>(z);
}

// NaN-propagating clamp (std::fmin/fmax would drop the NaN).
inline float clamp_keep_nan(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

// 1 / (1 + e^z) with z clamped into the core's range. NaN is returned before
// the core: converting it to an integer (order 1) is undefined behaviour.
template <int Order>
inline float inv_one_plus_exp(float z) {
  if (std::isnan(z)) return z;
  z = clamp_keep_nan(z, kExpMinArg, kExpMaxArg);
  return 1.0f / (1.0f + exp_core<Order>(z));
}

}  // namespace scalar
}  // namespace quake
