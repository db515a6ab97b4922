// Softmax and LogSoftmax of rows that stay in cache between passes (the
// OrderKernels softmax / logsoftmax entries of every table), written once
// over the per-ISA layer of softmax_long.h and instantiated by each ISA file
// (the scalar one's is the definition the others match).
//
// Three passes per row: the max; the terms (stored for Softmax) and their
// sum; the scaling (Softmax: y = term / sum) or the shift (LogSoftmax:
// y = (x - max) - log(sum)). The terms are those of softmax_long.h, in base
// 2: 2^t with t = fl(x log2(e) - k), k = floor(max log2(e)) an integer, so
// the subtraction of the max folds into the exponential's first FMA exactly
// (x log2(e) is not rounded before k is subtracted, and k is exact); a float
// max subtracted first and then multiplied by log2(e) costs one more
// operation per element, 15-18 % of this pass on Zen 4 (measured in L1). The
// max term is 2^t for t in (-0.25, 1.25) (kRowStatsLimit), so sum > 0.84.
// LogSoftmax takes log of the sum back to the max in double
// (longrow::base2_log_sum), and x - max is a float subtraction, exact near
// the max. Rows whose max is beyond
// kRowStatsLimit (kernels.h) use the base-e terms e^(x - max) instead.
//
// Rows go in groups, pass by pass (every row's max, then every row's terms,
// then every row's scaling): rows within a pass are independent, so one
// row's horizontal reductions overlap the next row's loads and arithmetic,
// which matters for the short rows of attention (n = 64, 128). The rows of
// one call form the group (up to 64): the op layer sizes calls from the L1
// size so that a group's input and output stay in L1 between passes.
//
// Results: Softmax abs error per element <= ~2x the core's relative error
// times the element, rows sum to 1 within a few ulp per lane sum; LogSoftmax
// abs error <= ~the core's relative error; a term below 2^-126 -> 0. All -inf
// row -> 0 (LogSoftmax: -inf); a NaN or +inf anywhere in a row -> NaN row.
// x and y may alias.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include "softmax_long.h"

namespace quake {
namespace rows {
// Internal linkage: each ISA file compiles its own copy with its own flags.
namespace {

template <class L, int Order, bool Log>
void softmax(const float* x, float* y, size_t rows, size_t n) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  constexpr size_t kMaxGroup = 64;
  float m[kMaxGroup], s[kMaxGroup];
  for (size_t r0 = 0; r0 < rows; r0 += kMaxGroup) {
    const size_t g = std::min(kMaxGroup, rows - r0);
    const float* xg = x + r0 * n;
    float* yg = y + r0 * n;
    for (size_t i = 0; i < g; ++i) m[i] = L::max_skip_nan(xg + i * n, n);
    for (size_t i = 0; i < g; ++i) {
      // Rows whose max is infinite or NaN are finished from x alone in the
      // last pass (this pass would overwrite x when it aliases y).
      if (std::isinf(m[i]) || std::isnan(m[i])) continue;
      s[i] = longrow::fits_base2(m[i])
                 ? L::template sum_exp2<Order, !Log, false>(xg + i * n, yg + i * n, n, longrow::base2_k(m[i]), 1.0f)
                 : L::template sum_exp<Order, !Log>(xg + i * n, yg + i * n, n, m[i]);
    }
    for (size_t i = 0; i < g; ++i) {
      const float* xr = xg + i * n;
      float* yr = yg + i * n;
      if (m[i] == kInf || std::isnan(m[i]) || (m[i] != -kInf && std::isnan(s[i]))) {
        L::fill(yr, n, kNaN);
      } else if (m[i] == -kInf) {
        L::fill(yr, n, L::has_nan(xr, n) ? kNaN : (Log ? -kInf : 0.0f));
      } else if (Log) {
        const double log_sum = longrow::fits_base2(m[i]) ? longrow::base2_log_sum(s[i], longrow::base2_k(m[i]), m[i])
                                                         : std::log(static_cast<double>(s[i]));
        L::sub2(xr, yr, n, m[i], static_cast<float>(log_sum));
      } else {
        L::scale(yr, n, 1.0f / s[i]);  // s > 0.84: the max element's term
      }
    }
  }
}

}  // namespace
}  // namespace rows
}  // namespace quake
