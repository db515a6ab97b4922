// Softmax and LogSoftmax of rows that stay in cache between passes (the
// OrderKernels softmax / logsoftmax entries of every table), written once
// over the per-ISA layer of softmax_long.h and instantiated by each ISA file
// (the scalar one's is the definition the others match).
//
// Three passes per row: the max; the terms (stored for Softmax) and their
// sum; the scaling (Softmax: y = term / sum) or the shift (LogSoftmax:
// y = (x - max) - log(sum)). Long rows on the AVX-512 table skip the
// max pass (head_first, below). The terms are those of softmax_long.h, in base
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
// abs error <= ~the core's relative error; a term below 2^-126 -> 0 (results
// below FLT_MIN 0, or subnormal under the head rule below). All -inf
// row -> 0 (LogSoftmax: -inf); a NaN or +inf anywhere in a row -> NaN row.
// x and y may alias.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <limits>

#include "softmax_long.h"

namespace quake {
namespace rows {
// Internal linkage: each ISA file compiles its own copy with its own flags.
namespace {

// The k of a row's terms. Any integer at or below the max's own
// floor(max log2(e)) gives the same results up to the rounding of t: the
// division by the sum cancels 2^k (LogSoftmax: the log of the sum is taken
// back by base2_log_sum). A row of kHeadMinRow elements or more takes the k
// of the max of its first kHead (16) elements (its head) when the row's max has
// t = fl(max log2(e) - k) of at most kHeadSpan against it (its terms, about
// 2^kHeadSpan at most, and their sum stay far from overflow, 1 / sum from
// the subnormals); other rows, and rows whose head holds no number or is
// beyond kRowStatsLimit - 64, take the max's own k. LogSoftmax rows that
// take the head's k subtract the head's max where others subtract the max,
// y = (x - head) - log_sum: near the max both terms stay below about 64, so
// their roundings (4e-6 at most) stay far inside the order's error. With a
// head's k, Softmax results below FLT_MIN may come out subnormal where the
// max's k flushes them to 0. The rule depends on the row alone, so results
// do not depend on the way they were computed (in place or not, alone or in
// a batch). head_first takes the terms before the max: a sum of at most
// 2^(kHeadSpan - 1) shows the rule holds (the sum is at least the max's
// term), and the max pass, one of three, is skipped; a larger sum (a row
// whose head runs far below its max, as left padding masked by -1e4 gives)
// costs a max pass, and where the rule gives the max's k, that row's terms
// again and the rest of the call in three passes. Softmax rows in place
// (x = y) keep their terms in a buffer of the thread's until their k is
// settled; LogSoftmax stores no terms. Rows shorter than kHeadMinRow keep
// the max pass: there the passes over a group of rows overlap one row's
// reductions with the next row's work, which the head's reduction ahead of
// each row's terms undoes. Zen 4, AVX-512, order 2, 1 thread,
// benchmarks/library_ab.py against three passes, Softmax, the speed-up's
// median over 7-9 paired rounds in several process runs (rows of 128, whose
// code did not change, read 0.91-1.12x in the same runs): rows of 64
// 0.85-0.89x, 128 0.99-1.00x, 192 0.94x, 256 0.93-1.12x, 384 1.02-1.21x,
// 512 1.07-1.10x (12x512x512; in place 0.99-1.00x, bound by memory), 3072
// 1.18-1.29x (in place 1.16-1.17x), 32000 0.95-1.32x (in place 1.11x).
constexpr size_t kHeadMinRow = 384;
using longrow::Head;
using longrow::head_k_stands;
using longrow::kHeadSum;

// Row x's head (longrow::head_of), for rows of kHeadMinRow or more.
template <class L, int Order>
bool row_head(const float* x, size_t n, Head* h) {
  return n >= kHeadMinRow && longrow::head_of<L, Order>(x, n, h);
}

// What the terms of row x are taken against, given its max m (finite, within
// kRowStatsLimit): the rule's k, and the float LogSoftmax subtracts first
// (x - ref, then the log of the sum taken back to ref: base2_log_sum).
template <class L, int Order, bool HeadRule>
Head row_ref(const float* x, size_t n, float m) {
  Head h;
  if (HeadRule && row_head<L, Order>(x, n, &h) && head_k_stands(m, h.k)) return h;
  return Head{m, longrow::base2_k(m)};
}

constexpr size_t kMaxGroup = 64;

// The three passes over a group of rows: every row's max, every row's terms
// and sum (against row_ref's k), every row's scaling or shift.
template <class L, int Order, bool Log, bool HeadRule>
void three_passes(const float* x, float* y, size_t rows, size_t n) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  float m[kMaxGroup], s[kMaxGroup];
  Head ref[kMaxGroup];
  for (size_t r0 = 0; r0 < rows; r0 += kMaxGroup) {
    const size_t g = std::min(kMaxGroup, rows - r0);
    const float* xg = x + r0 * n;
    float* yg = y + r0 * n;
    for (size_t i = 0; i < g; ++i) m[i] = L::max_skip_nan(xg + i * n, n);
    for (size_t i = 0; i < g; ++i) {
      // Rows whose max is infinite or NaN are finished from x alone in the
      // last pass (this pass would overwrite x when it aliases y).
      if (std::isinf(m[i]) || std::isnan(m[i])) continue;
      if (longrow::fits_base2(m[i])) {
        ref[i] = row_ref<L, Order, HeadRule>(xg + i * n, n, m[i]);
        s[i] = L::template sum_exp2<Order, !Log, false>(xg + i * n, yg + i * n, n, ref[i].k, 1.0f);
      } else {
        s[i] = L::template sum_exp<Order, !Log>(xg + i * n, yg + i * n, n, m[i]);
      }
    }
    for (size_t i = 0; i < g; ++i) {
      const float* xr = xg + i * n;
      float* yr = yg + i * n;
      if (m[i] == kInf || std::isnan(m[i]) || (m[i] != -kInf && std::isnan(s[i]))) {
        L::fill(yr, n, kNaN);
      } else if (m[i] == -kInf) {
        L::fill(yr, n, L::has_nan(xr, n) ? kNaN : (Log ? -kInf : 0.0f));
      } else if (Log && !longrow::fits_base2(m[i])) {
        L::log_prob(xr, yr, n, m[i], static_cast<float>(std::log(static_cast<double>(s[i]))));
      } else if (Log) {
        L::log_prob(xr, yr, n, ref[i].max, static_cast<float>(longrow::base2_log_sum(s[i], ref[i].k, ref[i].max)));
      } else {
        L::scale(yr, n, 1.0f / s[i]);  // s > 0.84: the max element's term (t > -0.25)
      }
    }
  }
}

// A thread's buffer of n <= kHeadBuffer floats for the terms of rows
// computed in place: x must stay readable until each row's k is known.
// Longer rows in place (float16 rows, which reach this kernel whole at any
// length) take three passes rather than hold a buffer of their size.
constexpr size_t kHeadBuffer = size_t{1} << 16;
// Null when it cannot be had (the caller takes three passes: no exception
// may leave an ONNX Runtime pool task). malloc, not std::vector: a template
// instantiated in an ISA-flagged file would be a weak symbol the linker may
// pick for every file (cmake/CheckIsaObjects.cmake).
struct TermsBuffer {
  float* data = nullptr;
  size_t size = 0;
  ~TermsBuffer() { std::free(data); }
};
inline float* terms_buffer(size_t n) {
  thread_local TermsBuffer buf;
  if (buf.size < n) {
    float* grown = static_cast<float*>(std::malloc(n * sizeof(float)));
    if (grown == nullptr) return nullptr;
    std::free(buf.data);
    buf.data = grown;
    buf.size = n;
  }
  return buf.data;
}

// Rows in groups, the terms first against each row's head's k, then the
// scaling (LogSoftmax: the shift); from the first row whose k is not its
// head's, that row and the rest of the call in three passes.
template <class L, int Order, bool Log>
void head_first(const float* x, float* y, size_t rows, size_t n) {
  constexpr bool kStore = !Log;  // LogSoftmax needs only the sum
  float s[kMaxGroup];
  Head h[kMaxGroup];
  const bool buffered = kStore && x == y;
  const size_t group = buffered ? std::min(kMaxGroup, kHeadBuffer / n) : kMaxGroup;
  for (size_t r0 = 0; r0 < rows; r0 += group) {
    const size_t g = std::min(group, rows - r0);
    const float* xg = x + r0 * n;
    float* yg = y + r0 * n;
    float* terms = buffered ? terms_buffer(g * n) : yg;
    if (terms == nullptr) return three_passes<L, Order, Log, true>(xg, yg, rows - r0, n);
    size_t i = 0;
    for (; i < g; ++i) {
      const float* xr = xg + i * n;
      if (!row_head<L, Order>(xr, n, &h[i])) break;  // the head holds no number
      s[i] = L::template sum_exp2<Order, kStore, false>(xr, terms + i * n, n, h[i].k, 1.0f);
      if (!(s[i] <= kHeadSum) && !head_k_stands(L::max_skip_nan(xr, n), h[i].k)) break;
    }
    for (size_t j = 0; j < i; ++j) {
      float* yr = yg + j * n;
      if (std::isnan(s[j])) {  // a NaN in the row (the max skips it)
        L::fill(yr, n, std::numeric_limits<float>::quiet_NaN());
      } else if (Log) {
        L::log_prob(xg + j * n, yr, n, h[j].max, static_cast<float>(longrow::base2_log_sum(s[j], h[j].k, h[j].max)));
      } else {
        L::scale_to(terms + j * n, yr, n, 1.0f / s[j]);
      }
    }
    if (i < g) return three_passes<L, Order, Log, true>(xg + i * n, yg + i * n, rows - r0 - i, n);
  }
}

template <class L, int Order, bool Log>
void softmax(const float* x, float* y, size_t rows, size_t n) {
  if constexpr (L::template kSaturatingTerms<Order>) {
    if (n >= kHeadMinRow && (Log || x != y || n <= kHeadBuffer)) return head_first<L, Order, Log>(x, y, rows, n);
    if (n >= kHeadMinRow) return three_passes<L, Order, Log, true>(x, y, rows, n);
  }
  three_passes<L, Order, Log, false>(x, y, rows, n);
}

}  // namespace
}  // namespace rows
}  // namespace quake
