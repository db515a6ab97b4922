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

constexpr int kMaxLevels = 256;

// The authors' fits C = slope * sigma + offset for 2, 3 and 4 bits. Bits 5..8
// have no published fit: slope and offset are the least-squares lines through
// the three published points, extrapolated (slope -1.7467 - 0.085 (b - 3),
// offset -2.06 - 0.21 (b - 3); the offsets are exactly linear already).
inline double clip_from_sigma(int bits, double sigma) {
  double slope, offset;
  switch (bits) {
    case 2: slope = -1.66; offset = -1.85; break;
    case 3: slope = -1.75; offset = -2.06; break;
    case 4: slope = -1.83; offset = -2.27; break;
    default:
      slope = -5.24 / 3.0 - 0.085 * (bits - 3);
      offset = -2.06 - 0.21 * (bits - 3);
      break;
  }
  return slope * sigma + offset;
}

// The levels of one row (or of every row, for a fixed clip).
struct Levels {
  float a;    // codes per unit of z
  float top;  // L - 1
  int32_t levels;
  alignas(64) float table[kMaxLevels];  // e^(lo + k (-lo) / (L - 1)); table[L - 1] = 1
};

// lo in [kExpUnderflow, 0]. The table is e^level in double rounded once:
// q = e^-step to the power j, from the top level down, as q^(16 i) * q^r so
// the 256-level table costs no long dependent chain.
inline void make_levels(int bits, float lo, Levels* lv) {
  const int n = 1 << bits;
  lv->levels = n;
  lv->top = static_cast<float>(n - 1);
  lv->a = lo < 0.0f ? static_cast<float>(n - 1) / -lo : 0.0f;  // lo = 0: every live z is 0, code L - 1
  const double step = -static_cast<double>(lo) / (n - 1);
  const double q = std::exp(-step);
  double small[16];
  small[0] = 1.0;
  for (int r = 1; r < 16; ++r) small[r] = small[r - 1] * q;
  const double q16 = small[15] * q;
  double big = 1.0;
  for (int j0 = 0; j0 < n; j0 += 16) {
    for (int r = 0; r < 16 && j0 + r < n; ++r) lv->table[n - 1 - (j0 + r)] = static_cast<float>(big * small[r]);
    big *= q16;
  }
  lv->table[n - 1] = 1.0f;
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

}  // namespace exaq
}  // namespace quake
