// Softmax and LogSoftmax of rows too long to stay in cache between passes,
// written once over a per-ISA layer and instantiated by each ISA file.
//
// Two passes over memory instead of three. Pass 1 (stats) reads the row once
// for its max and the sum of its terms, block by block, each block read a
// second time from L1 (once only where head_stats' rule holds); pass 2
// (finish) reads the row again and writes the result: 2 reads + 1 write of the row where max / exp-and-store / scale
// cost 3 reads + 2 writes once the row no longer stays in cache between passes, at the price of a second exponential
// per element. This is the two-pass softmax of Dukhan & Ablavatski (arXiv 2001.04438), which keeps the terms in base 2
// so that partial sums rescale exactly: a term is 2^t with t = fl(x log2(e) - k) for an integer k (floor of the block's
// max times log2(e)), and sums relative to different k combine by powers of two (combine_stats in kernels.h). Pass 2
// uses the row's k, so it computes the same fractions of t as pass 1 up to the rounding of t (relative 2^-24 |t|): rows
// sum to 1 within 1e-5 as with the one-pass kernels, where stats taken against a block max with a float subtraction
// would not (the core's error pattern differs between x - m_b and x - m). Stats of chunks of one row combine the same
// way, so a single long row can be split over threads: stats per chunk in parallel, one combine, finish per chunk.
//
// Results are those of the one-row kernels up to summation order and the
// rounding of t: a NaN or +inf anywhere in the row -> NaN row; all -inf -> 0
// (LogSoftmax: -inf); a term below 2^-126 (a result below FLT_MIN) -> 0;
// error bounds as the one-row kernels (kernels.h). Rows whose max is beyond
// kRowStatsLimit (kernels.h: 2^22, where k stops being exact enough) are
// not for this path: the caller checks it and uses the one-row kernel.
//
// The layer L (a struct of static functions of one ISA file) provides:
//   float max_skip_nan(const float* x, size_t n);   // -inf when no number (or NaN: taken as a NaN row)
//   bool has_nan(const float* x, size_t n);
//   template <int Order, bool Store, bool Scaled>
//   float sum_exp2(const float* x, float* y, size_t n, float k, float scale);
//     the sum of 2^(x log2 e - k); with Store, y = the terms (times scale with Scaled)
//   template <int Order, bool Store>
//   float sum_exp(const float* x, float* y, size_t n, float m);
//     the sum of e^(x - m); with Store, y = the terms
//   void log_prob(const float* x, float* y, size_t n, float a, float b);
//     y = min((x - a) - b, 0), NaN kept: LogSoftmax's result, a log-probability,
//     which the true value never exceeds (with an approximate sum the max's
//     own result could come out a little above 0)
//   void scale(float* y, size_t n, float c);                          // y *= c
//   void scale_to(const float* x, float* y, size_t n, float c);       // y = x c
//   template <int Order> static constexpr bool kSaturatingTerms;
//     whether sum_exp2's terms are +inf (or NaN) for t >= 128 rather than
//     wrapped exponent bits (head_of)
//   void fill(float* y, size_t n, float value);
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include "constants.h"
#include "kernels.h"

namespace quake {
namespace longrow {
// Internal linkage: each ISA file compiles its own copy with its own flags.
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// The integer a row's terms are taken relative to: the max's t lies in [0, 1).
inline float base2_k(float max) { return std::floor(max * kLog2e); }

// Whether a row with this max can use the base-2 terms: x log2(e) stays a
// finite float. Rows beyond (all elements near +-FLT_MAX) take the one-row kernel.
inline bool fits_base2(float max) { return !(std::fabs(max) > kRowStatsLimit); }

// ln of the sum of e^(x - max) from the sum of a row's base-2 terms
// 2^fl(x kLog2e - k): the terms use the float kLog2e, so the correction back
// to the max must too (with log2(e) itself, a max of 1e4 would be off by
// 1.9e-4, the float constant's error times the max).
inline double base2_log_sum(double sum, double k, float max) {
  return std::log(sum) + (k - static_cast<double>(max) * static_cast<double>(kLog2e)) * kLn2D;
}

// The head rule (softmax_rows.h gives it whole): the terms of a row, block or
// chunk may be taken against the k of its head, the max of its first kHead
// elements, when its max has t = fl(max log2(e) - k) of at most kHeadSpan
// against that k; a sum of the terms of at most kHeadSum proves it (the sum
// holds the max's term), so the max pass is skipped.
constexpr size_t kHead = 16;
constexpr float kHeadSpan = 60.0f;
constexpr float kHeadSum = 0x1p59f;  // 2^(kHeadSpan - 1)

// A head: the max of the first kHead elements and that max's k.
struct Head {
  float max, k;
};

// x's head, when the rule may give its k: on a layer whose terms saturate
// to +inf for t >= 128 (where they wrap, a row far above its head could sum
// below kHeadSum: the AVX-512 table's orders 2 and 3), for a head that holds
// a number 64 inside kRowStatsLimit (t <= kHeadSpan then puts the max within
// kHeadSpan / log2(e) < 64 of the head, so within the limit too: a sum
// accepted without the max never meets a max the base-e path would take).
template <class L, int Order>
bool head_of(const float* x, size_t n, Head* h) {
  if (!L::template kSaturatingTerms<Order> || n < kHead) return false;
  h->max = L::max_skip_nan(x, kHead);
  if (!(std::fabs(h->max) <= kRowStatsLimit - 64.0f)) return false;
  h->k = base2_k(h->max);
  return true;
}

// Whether a row (block) with this max takes its head's k.
inline bool head_k_stands(float max, float k) {
  return std::isfinite(max) && fits_base2(max) && std::fma(max, kLog2e, -k) <= kHeadSpan;
}

// A block's stats against its head's k where the rule holds (a sum of at
// most kHeadSum), its max pass skipped. RowStats.max is then the head: the
// finish passes read it as the reference the log of the sum is taken back to
// (base2_log_sum) and the row's k as the largest block k, which keeps every
// term at most 2^60. False (the block's max decides) for a block without a
// head (head_of) or with a larger sum.
template <class L, int Order>
bool head_stats(const float* x, size_t len, RowStats* part) {
  Head h;
  if (!head_of<L, Order>(x, len, &h)) return false;
  const float s = L::template sum_exp2<Order, false, false>(x, nullptr, len, h.k, 1.0f);
  if (!(s <= kHeadSum)) return false;
  *part = RowStats{h.max, h.k, s, false};
  return true;
}

template <class L, int Order>
void stats(const float* x, size_t n, size_t block, RowStats* out) {
  RowStats acc{-kInf, 0.0, 0.0, false};
  for (size_t b = 0; b < n; b += block) {
    const size_t len = std::min(block, n - b);
    RowStats head;
    if (head_stats<L, Order>(x + b, len, &head)) {
      acc = combine_stats(acc, head);
      continue;
    }
    const float m = L::max_skip_nan(x + b, len);
    RowStats part{m, 0.0, 0.0, false};
    if (std::isnan(m) || m == kInf) {
      part.nan = true;  // a NaN (where the max propagates it) or +inf: a NaN row, as the one-row kernels give
    } else if (m == -kInf) {
      part.nan = L::has_nan(x + b, len);  // all -inf (or NaN): no terms
    } else if (!fits_base2(m)) {
      // No terms here: the row's max decides (below it they vanish, and a row
      // whose max is this far out is the caller's to redo with the one-row kernel).
      part.nan = L::has_nan(x + b, len);
    } else {
      const float k = base2_k(m);
      const float s = L::template sum_exp2<Order, false, false>(x + b, nullptr, len, k, 1.0f);
      part.nan = std::isnan(s);
      part.k = k;
      part.sum = s;
    }
    acc = combine_stats(acc, part);
  }
  *out = acc;
}

template <class L, int Order>
void softmax_finish(const float* x, float* y, size_t n, size_t block, const RowStats& row) {
  if (row.nan) return L::fill(y, n, std::numeric_limits<float>::quiet_NaN());
  if (row.max == -kInf) return L::fill(y, n, 0.0f);
  const float inv = static_cast<float>(1.0 / row.sum);  // sum > 0.84: the max element's term (kRowStatsLimit)
  const float k = static_cast<float>(row.k);
  for (size_t b = 0; b < n; b += block) {
    const size_t len = std::min(block, n - b);
    L::template sum_exp2<Order, true, true>(x + b, y + b, len, k, inv);
  }
}

template <class L>
void logsoftmax_finish(const float* x, float* y, size_t n, size_t, const RowStats& row) {
  if (row.nan) return L::fill(y, n, std::numeric_limits<float>::quiet_NaN());
  if (row.max == -kInf) return L::fill(y, n, -kInf);
  // x - max stays exact near the max, as in the one-row kernels.
  L::log_prob(x, y, n, row.max, static_cast<float>(base2_log_sum(row.sum, row.k, row.max)));
}

// partial's terms against the chunk's max m.
template <class L, int Order>
void partial_against_max(const float* x, float* y, size_t n, float m, ChunkStats* out) {
  *out = ChunkStats{m, 0.0, false};
  if (std::isnan(m) || m == kInf) {
    out->nan = true;
  } else if (m == -kInf) {
    out->nan = L::has_nan(x, n);  // no terms; the row's pass writes the zeros
  } else {
    const float s =
        y ? L::template sum_exp<Order, true>(x, y, n, m) : L::template sum_exp<Order, false>(x, nullptr, n, m);
    out->nan = std::isnan(s);
    out->sum = s;
  }
}

// The chunk phase of a long row over threads (ChunkStats in kernels.h): the
// one-row kernel's first two passes on the chunk, against the chunk's own
// max, or against the max of its first kHead elements (the head) when
// the chunk's max is at most kChunkSpan above it: the head rule of
// softmax_rows.h in base e (terms e^(x - ref), ChunkStats.max = ref; the
// combination and the scaling read it as the chunk's reference, so any
// reference at or below the max gives the same results up to rounding).
// Where the terms saturate (the AVX-512 table's orders 2 and 3), the terms
// are taken against the head first and a sum of at most kChunkSum proves
// the rule (the sum holds e^(max - head)), so the max pass is skipped; in
// place (x = y, the terms would overwrite x) and where the sum is larger, the
// max comes first and decides. The rule depends on the chunk alone, so the
// results do not depend on the way they were computed.
constexpr float kChunkSpan = 41.0f;   // 59 in base 2, as softmax_rows.h's kHeadSpan
constexpr float kChunkSum = 0x1p57f;  // e^39.5: the max at most 39.6 above the head

template <class L, int Order>
void partial(const float* x, float* y, size_t n, ChunkStats* out) {
  if constexpr (L::template kSaturatingTerms<Order>) {
    const float head = n >= kHead ? L::max_skip_nan(x, kHead) : -kInf;
    if (std::isfinite(head)) {
      float s = 0.0f;
      if (y != x) {
        s = y ? L::template sum_exp<Order, true>(x, y, n, head)
              : L::template sum_exp<Order, false>(x, nullptr, n, head);
        if (s <= kChunkSum) {
          *out = ChunkStats{head, s, false};
          return;
        }
      }
      const float m = L::max_skip_nan(x, n);
      if (std::isfinite(m) && m - head <= kChunkSpan) {
        if (y == x) s = L::template sum_exp<Order, true>(x, y, n, head);  // in place: not yet taken
        *out = ChunkStats{head, s, std::isnan(s)};
        return;
      }
      return partial_against_max<L, Order>(x, y, n, m, out);
    }
  }
  partial_against_max<L, Order>(x, y, n, L::max_skip_nan(x, n), out);
}

template <class L>
void scale(float* y, size_t n, float c) {
  L::scale(y, n, c);
}

template <class L>
void shift(const float* x, float* y, size_t n, float a, float b) {
  L::log_prob(x, y, n, a, b);
}

}  // namespace
}  // namespace longrow
}  // namespace quake
