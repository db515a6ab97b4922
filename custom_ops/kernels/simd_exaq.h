// Softmax method "exaq" (EXAQ, arXiv 2410.03185) on rows, written once over
// an ISA's vector layer V (elementwise.h, simd_rows.h) and its table lookup.
// The scalar definition is softmax_exaq_scalar (kernels_scalar.cc); the level
// table, clip and code arithmetic are exaq_scalar.h's, so codes equal the
// scalar ones bit for bit (one FMA, a round-to-nearest-even conversion) when
// lo does. What differs from the scalar definition: the sum of the stored
// terms in float lanes (simd_rows::sum_stored_terms) instead of counts times
// the table (measured faster on Zen 5); both are the same sum up to float
// rounding (rows sum to 1 within 1e-5).
//
// Results: y = table[code(x - max)] / sum; elements with x - max <=
// kExpUnderflow are exactly 0; an all -inf row -> 0; a NaN or +inf anywhere
// in a row -> NaN row. x and y may alias.
//
// Rows go in groups, pass by pass, as in softmax_rows.h (every row's max,
// then the derived lo of each row, its terms, then the scaling): the op layer
// sizes each call's rows so that they stay in L1 between passes.
//
// The ISA file gives:
//   V::gt(a, b): the mask a > b (false for NaN);
//   Lookup(levels): the level table in registers; lookup(live, u) is
//     entry(round_to_nearest_even(u)) in the live lanes and +0 in the others,
//     for u >= 0 (u NaN only in lanes that are not live);
//   derived_lo(x, n, max, bits): lo of a row under a derived clip
//     (ExaqParams::clip == 0): the statistics of its live z in double lanes,
//     then exaq::derived_lo.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include "constants.h"
#include "exaq_scalar.h"
#include "kernels.h"
#include "simd_rows.h"

namespace quake {
namespace simd_exaq {
// Internal linkage: each ISA file compiles its own copy with its own flags.
namespace {

// Terms table[code(x - m)] of one row, stored to y, and their sum (>= 1: the
// max element's entry is e^0); NaN when the row holds a NaN. Where V's max
// drops NaN, a NaN z is summed aside (only NaN survives that sum as NaN, the
// -inf of masked elements stays -inf); where it keeps NaN (AArch64), the row
// max was NaN and the row never gets here.
template <class V, class Lookup>
inline float row_terms(const float* x, float* y, size_t n, float m, const exaq::Levels& lv) {
  using Vec = typename V::Vec;
  const Lookup lookup(lv);
  const Vec vm = V::set(m), under = V::set(kExpUnderflow), zero = V::set(0.0f);
  const Vec va = V::set(lv.a), vtop = V::set(lv.top);
  Vec q = zero;
  auto term = [&](Vec xv) {
    const Vec z = V::sub(xv, vm);
    if (!V::kMaxKeepsNaN) q = V::add(q, z);
    // max(u, 0) sends a NaN u (z = -inf with a = 0) to 0 on x86 and keeps it
    // on AArch64, whose conversion sends it to 0; the lane is not live anyway.
    return lookup(V::gt(z, under), V::max(V::fma(z, va, vtop), zero));
  };
  const float sum = simd_rows::sum_stored_terms<V, true>(x, y, n, term);
  if (!V::kMaxKeepsNaN && std::isnan(V::reduce_add(q))) return std::numeric_limits<float>::quiet_NaN();
  return sum;
}

// EXAQ Softmax of `rows` rows of n floats (see the top of this file).
template <class V, class Lookup, class DerivedLo>
void rows(const float* x, float* y, size_t rows, size_t n, const ExaqParams& p, DerivedLo derived_lo) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  constexpr size_t kMaxGroup = 64;
  const bool derived = p.clip == 0.0f;
  exaq::Levels lv{};
  if (!derived) exaq::make_levels(p.bits, exaq::fixed_lo(p.clip), &lv);
  float m[kMaxGroup], s[kMaxGroup], lo[kMaxGroup];
  for (size_t r0 = 0; r0 < rows; r0 += kMaxGroup) {
    const size_t g = std::min(kMaxGroup, rows - r0);
    const float* xg = x + r0 * n;
    float* yg = y + r0 * n;
    // A row is finished from x alone (below) where its max is not finite: y may alias x.
    auto finite = [&](size_t i) { return std::isfinite(m[i]); };
    for (size_t i = 0; i < g; ++i) m[i] = simd_rows::row_max<V>(xg + i * n, n);
    if (derived) {
      for (size_t i = 0; i < g; ++i) {
        if (finite(i)) lo[i] = derived_lo(xg + i * n, n, m[i], p.bits);
      }
    }
    for (size_t i = 0; i < g; ++i) {
      if (!finite(i)) continue;
      if (derived) exaq::make_levels(p.bits, lo[i], &lv);
      s[i] = row_terms<V, Lookup>(xg + i * n, yg + i * n, n, m[i], lv);
    }
    for (size_t i = 0; i < g; ++i) {
      const float* xr = xg + i * n;
      float* yr = yg + i * n;
      if (m[i] == -kInf) {  // every element -inf, or (where V's max drops NaN) NaN
        const bool nan = !V::kMaxKeepsNaN && simd_rows::row_has_nan<V>(xr, n);
        simd_rows::fill<V>(yr, n, nan ? kNaN : 0.0f);
      } else if (!finite(i) || std::isnan(s[i])) {  // +inf or NaN
        simd_rows::fill<V>(yr, n, kNaN);
      } else {
        simd_rows::SimdRowMaps<V>::scale(yr, n, 1.0f / s[i]);
      }
    }
  }
}

}  // namespace
}  // namespace simd_exaq
}  // namespace quake
