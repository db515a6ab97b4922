// EXAQ (arXiv 2410.03185) pieces every ISA shares, so that the level table,
// the clip and the code arithmetic are the same numbers on every table:
// z = x - max is clipped to [lo, 0] and rounded to one of L = 2^bits evenly
// spaced levels; e^z comes from an L-entry table.
//
// Code of an element: k = round_to_nearest_even(fma(z, a, L - 1)), clamped
// to >= 0, with a = (L - 1) / -lo. Every ISA computes exactly this (FMA and
// round-to-nearest-even conversion), so codes agree bit for bit when lo does.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "constants.h"

namespace quake {
namespace exaq {
// Internal linkage: each kernel file compiles these with its own ISA flags,
// and a merged out-of-line copy must never run on a CPU without them.
namespace {

constexpr int kMaxLevels = 256;

// The authors' fits C = slope * sigma + offset for 2, 3 and 4 bits. Bits 5..8
// have no published fit: slope and offset are the least-squares lines through
// the three published points, extrapolated (slope -1.7467 - 0.085 (b - 3),
// offset -2.06 - 0.21 (b - 3); the offsets are exactly linear already).
inline double clip_from_sigma(int bits, double sigma) {
  double slope, offset;
  switch (bits) {
    case 2:
      slope = -1.66;
      offset = -1.85;
      break;
    case 3:
      slope = -1.75;
      offset = -2.06;
      break;
    case 4:
      slope = -1.83;
      offset = -2.27;
      break;
    default:
      slope = -5.24 / 3.0 - 0.085 * (bits - 3);
      offset = -2.06 - 0.21 * (bits - 3);
      break;
  }
  return slope * sigma + offset;
}

// The levels of one row (or of every row, for a fixed clip). With
// j = L - 1 - code (steps below the top level) the entry is
// e^(-j step) = P[j / 16] * Q[j % 16], P[h] = e^(-16 h step) and
// Q[r] = e^(-r step) computed in double and rounded to float, their product
// rounded once more (within 1.5 ulp of e^level). The SIMD kernels look up P
// and Q in registers (two 16-entry permutes serve 256 levels) and multiply;
// table[] holds the entries of up to 16 levels, entry() any of them. Small
// (~200 bytes) so the SIMD kernels keep one per row of a group.
struct Levels {
  float a;    // codes per unit of z
  float top;  // L - 1
  int32_t levels;
  alignas(64) float p[16];
  alignas(64) float q[16];
  alignas(64) float table[16];  // table[L - 1] = 1
};

inline float entry(const Levels& lv, int code) {
  const int j = lv.levels - 1 - code;
  return lv.p[j >> 4] * lv.q[j & 15];
}

// v[i] = base^i for i < count (count <= 16) by doubling: depth 4 instead of a
// chain of 15 dependent multiplies (this runs once per row when C is derived).
inline void powers(double base, int count, double* v) {
  v[0] = 1.0;
  double b = base;
  for (int have = 1; have < count; have *= 2, b *= b) {
    for (int i = 0; i < have && have + i < count; ++i) v[have + i] = v[i] * b;
  }
}

// lo in [kExpUnderflow, 0]. Only the entries a kernel can read are set: q up
// to min(L, 16), p up to L / 16 and table[] up to min(L, 16).
inline void make_levels(int bits, float lo, Levels* lv) {
  const int n = 1 << bits;
  lv->levels = n;
  lv->top = static_cast<float>(n - 1);
  lv->a = lo < 0.0f ? static_cast<float>(n - 1) / -lo : 0.0f;    // lo = 0: every live z is 0, code L - 1
  const double r = std::exp(static_cast<double>(lo) / (n - 1));  // e^-step
  const int nq = n < 16 ? n : 16, np = n > 16 ? n / 16 : 1;
  double q[16], p[16];
  powers(r, nq, q);
  powers(np > 1 ? q[15] * r : 1.0, np, p);  // e^(-16 step)
  for (int i = 0; i < nq; ++i) lv->q[i] = static_cast<float>(q[i]);
  for (int i = 0; i < np; ++i) lv->p[i] = static_cast<float>(p[i]);
  for (int k = 0; k < nq; ++k) lv->table[k] = entry(*lv, k);
}

// The clip of a fixed-C call: C itself, kept inside the exponential's range.
inline float fixed_lo(float clip) { return std::max(clip, kExpUnderflow); }

// lo of a derived-C row from its live elements' statistics: count, sum of z,
// sum of z^2 (double) and the smallest live z. sigma is the population
// standard deviation (ddof 0); lo = max(C(sigma), smallest live z).
inline float derived_lo(int bits, double count, double sum, double sum_sq, float zmin) {
  const double mean = sum / count;
  const double var = std::max(0.0, sum_sq / count - mean * mean);
  const float c = static_cast<float>(clip_from_sigma(bits, std::sqrt(var)));
  return std::max(c, zmin);
}

// Scalar code of a live z (z > kExpUnderflow, not NaN).
// Below lo the code is 0 (the clip); u is tested before the conversion,
// which would overflow for z far below a narrow row's lo.
inline int32_t code(float z, const Levels& lv) {
  const float u = std::fma(z, lv.a, lv.top);
  return u > 0.0f ? static_cast<int32_t>(std::nearbyint(u)) : 0;
}

}  // namespace
}  // namespace exaq
}  // namespace quake
