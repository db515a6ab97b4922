// The row passes every SIMD table runs, written once over elementwise.h's
// vector layer V: the row max, the sum of a row's exponential terms (the
// exponential pass of Softmax and LogSoftmax, base e or base 2), the NaN
// scan, the fill, the row layer softmax_long.h and softmax_rows.h are
// written over (SimdRowLayer), and the online-softmax step of com.quake
// Attention. The scalar definitions are in kernels_scalar.cc; results differ
// from them in the order of summation (sums in float lanes, blocks of 64
// vectors, within ~1e-6 of the double sums) and in what each ISA file's
// header lists (AVX-512: its exponential core, and the head rule's
// subnormal results).
//
// V, beyond elementwise.h's list:
//   load_tail_or(p, rem, fill): a float tail, lanes past rem = fill;
//   first(rem): the mask of the first rem lanes; mask_and, mask_or, any;
//   ge_or_nan(a, b): a >= b or either NaN;
//   fms(a, b, c) = a b - c in one rounding; reduce_add, reduce_max;
//   kMaxKeepsNaN: max(v, acc) is NaN for a NaN v (AArch64's FMAX), so a
//     row max shows a NaN and no separate scan is needed;
//   exp_term<Order>(z): e^z for z <= 0, +0 at and below kExpUnderflow
//     (a NaN z: x86 NaN at orders 2 and 3, -0 at order 1; AArch64 +0, its
//     NaN row max having sent the row away before);
//   exp2_term<Order>(t): 2^t for t < 128, +0 below -126 (NaN as exp_term).
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>

#include "attention.h"
#include "constants.h"
#include "elementwise.h"
#include "kernels.h"

namespace quake {
namespace simd_rows {
// Internal linkage: each ISA file compiles its own copy with its own flags.
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Row max in four accumulators; a NaN is skipped (x86: MAXPS returns its
// second operand, the accumulator) or makes the max NaN (kMaxKeepsNaN).
template <class V>
float row_max(const float* x, size_t n) {
  using Vec = typename V::Vec;
  constexpr size_t L = V::kLanes;
  const Vec ninf = V::set(-kInf);
  Vec m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
  size_t i = 0;
  for (; i + 4 * L <= n; i += 4 * L) {
    m0 = V::max(V::load(x + i), m0);
    m1 = V::max(V::load(x + i + L), m1);
    m2 = V::max(V::load(x + i + 2 * L), m2);
    m3 = V::max(V::load(x + i + 3 * L), m3);
  }
  for (; i + L <= n; i += L) m0 = V::max(V::load(x + i), m0);
  if (i < n) m1 = V::max(V::load_tail_or(x + i, n - i, -kInf), m1);
  return V::reduce_max(V::max(V::max(m0, m1), V::max(m2, m3)));
}

template <class V>
bool row_has_nan(const float* x, size_t n) {
  constexpr size_t L = V::kLanes;
  typename V::Mask any = V::is_nan(V::set(0.0f));
  size_t i = 0;
  for (; i + L <= n; i += L) any = V::mask_or(any, V::is_nan(V::load(x + i)));
  if (i < n) any = V::mask_or(any, V::is_nan(V::load_tail(x + i, n - i)));
  return V::any(any);
}

template <class V>
void fill(float* y, size_t n, float value) {
  constexpr size_t L = V::kLanes;
  const typename V::Vec v = V::set(value);
  size_t i = 0;
  for (; i + L <= n; i += L) V::store(y + i, v);
  if (i < n) V::store_tail(y + i, n - i, v);
}

// The skeleton of a row's exponential pass: e = term(x) for every element
// (tail lanes past n read -inf, which every term maps to 0), stored(e)
// written to y when Store, and the sum of the e in float lanes: four
// accumulators over blocks of 64 vectors, the blocks summed separately,
// which keeps the float sum of a 50k row within ~1e-6 (one accumulator over
// the whole row drifts by ~1e-4). Softmax's terms (sum_exp_shifted) and
// EXAQ's table lookups (simd_exaq.h's row_terms) run in it.
struct Unchanged {
  template <class Vec>
  Vec operator()(Vec e) const {
    return e;
  }
};

template <class V, bool Store, class Term, class Stored = Unchanged>
float sum_stored_terms(const float* x, float* y, size_t n, Term term, Stored stored = {}) {
  using Vec = typename V::Vec;
  constexpr size_t L = V::kLanes;
  const Vec zero = V::set(0.0f);
  Vec s0 = zero, s1 = zero, s2 = zero, s3 = zero, total = zero;
  size_t i = 0;
  const size_t body_end = n / (4 * L) * (4 * L);
  while (i < body_end) {
    const size_t block_end = body_end - i > 64 * L ? i + 64 * L : body_end;
    s0 = s1 = s2 = s3 = zero;
    for (; i < block_end; i += 4 * L) {
      const Vec e0 = term(V::load(x + i)), e1 = term(V::load(x + i + L));
      const Vec e2 = term(V::load(x + i + 2 * L)), e3 = term(V::load(x + i + 3 * L));
      if (Store) {
        V::store(y + i, stored(e0));
        V::store(y + i + L, stored(e1));
        V::store(y + i + 2 * L, stored(e2));
        V::store(y + i + 3 * L, stored(e3));
      }
      s0 = V::add(s0, e0);
      s1 = V::add(s1, e1);
      s2 = V::add(s2, e2);
      s3 = V::add(s3, e3);
    }
    total = V::add(total, V::add(V::add(s0, s1), V::add(s2, s3)));
  }
  s0 = s1 = zero;
  for (; i + L <= n; i += L) {
    const Vec e = term(V::load(x + i));
    if (Store) V::store(y + i, stored(e));
    s0 = V::add(s0, e);
  }
  if (i < n) {
    const Vec e = term(V::load_tail_or(x + i, n - i, -kInf));
    if (Store) V::store_tail(y + i, n - i, stored(e));
    s1 = V::add(s1, e);
  }
  return V::reduce_add(V::add(total, V::add(s0, s1)));
}

// Sum of e^(x - m) over the row, each term stored in y when Store. z = x - m
// is <= 0 and NaN only for a NaN element, so only the underflow fixup is
// needed. On x86, orders 2 and 3 carry a NaN z into the sum and the
// order-1 core maps NaN to -0, so order 1 also sums z (finite or -inf unless
// some z is NaN); AArch64 never sees a NaN row here (kMaxKeepsNaN).
// Base2 (softmax_long.h): m is an integer k and the terms are 2^t with
// t = fl(x log2(e) - k), 0 below t = -126; with Scaled, stored terms are
// multiplied by `scale` (the sum is of the unscaled terms).
template <class V, int Order, bool Store, bool Base2 = false, bool Scaled = false>
float sum_exp_shifted(const float* x, float* y, size_t n, float m, float scale = 1.0f) {
  using Vec = typename V::Vec;
  const Vec vm = V::set(m), log2e = V::set(kLog2e), vscale = V::set(scale);
  Vec q = V::set(0.0f);
  auto term = [&](Vec xv) {
    const Vec z = Base2 ? V::fms(xv, log2e, vm) : V::sub(xv, vm);
    if constexpr (Order == 1) q = V::add(q, z);
    return Base2 ? V::template exp2_term<Order>(z) : V::template exp_term<Order>(z);
  };
  auto stored = [&](Vec e) { return Scaled ? V::mul(e, vscale) : e; };
  const float sum = sum_stored_terms<V, Store>(x, y, n, term, stored);
  if (Order == 1 && std::isnan(V::reduce_add(q))) return std::numeric_limits<float>::quiet_NaN();
  return sum;
}

// The members of a row layer R that are maps over V, and its saturation
// rule: V's exponential core saturates exactly where R's base-2 terms do
// (VSCALEFPS on AVX-512, orders 2 and 3).
template <class V>
struct SimdRowMaps {
  template <int Order>
  static constexpr bool kSaturatingTerms = V::template kSaturatingCore<Order>;
  // y = min(0, (x - a) - b), NaN kept: LogSoftmax's results.
  static void log_prob(const float* x, float* y, size_t n, float a, float b) {
    const typename V::Vec va = V::set(a), vb = V::set(b);
    elementwise::map<V>(x, y, n, [=](typename V::Vec v) { return V::at_most_zero(V::sub(V::sub(v, va), vb)); });
  }
  static void scale(float* y, size_t n, float c) { scale_to(y, y, n, c); }
  static void scale_to(const float* x, float* y, size_t n, float c) {  // y = x c
    const typename V::Vec vc = V::set(c);
    elementwise::map<V>(x, y, n, [vc](typename V::Vec v) { return V::mul(v, vc); });
  }
};

// The row layer softmax_long.h and softmax_rows.h are written over: V's
// row passes and maps (SimdRowMaps, above).
template <class V>
struct SimdRowLayer : SimdRowMaps<V> {
  static float max_skip_nan(const float* x, size_t n) { return row_max<V>(x, n); }
  // Where the max keeps NaN, a row holding one has a NaN max (stats take it
  // for a NaN row) and no scan is needed.
  static bool has_nan(const float* x, size_t n) { return !V::kMaxKeepsNaN && row_has_nan<V>(x, n); }
  template <int Order, bool Store, bool Scaled>
  static float sum_exp2(const float* x, float* y, size_t n, float k, float scale) {
    return sum_exp_shifted<V, Order, Store, true, Scaled>(x, y, n, k, scale);
  }
  static void fill(float* y, size_t n, float value) { simd_rows::fill<V>(y, n, value); }
  template <int Order, bool Store>
  static float sum_exp(const float* x, float* y, size_t n, float m) {
    return sum_exp_shifted<V, Order, Store>(x, y, n, m);
  }
};

// Online-softmax step of com.quake Attention (attention.h's OnlineSoftmaxFn):
// the scalar definition (kernels_scalar.cc) in V's lanes, two passes over
// each row of the tile (scale, mask and max; then e^(s - m_new) with the
// row sum in float lanes: a tile row has at most a few thousand columns,
// within ~1e-6 of the double sum). Columns past the live ones are zeroed.
template <class V, int Order>
void online_softmax(float* s, size_t ld_s, size_t rows, size_t cols, ptrdiff_t diag, float scale, const float* mask,
                    size_t ld_mask, float* m, float* l, float* rescale) {
  using Vec = typename V::Vec;
  using Mask = typename V::Mask;
  constexpr size_t L = V::kLanes;
  const Vec vscale = V::set(scale), pinf = V::set(kInf), ninf = V::set(-kInf);
  for (size_t r = 0; r < rows; ++r) {
    float* sr = s + r * ld_s;
    const float* mr = mask ? mask + r * ld_mask : nullptr;
    const size_t live = live_columns(r, cols, diag);
    Vec vmax = ninf;
    Mask bad = V::is_nan(V::set(0.0f));  // NaN or +inf lanes
    auto scaled = [&](Vec x, Vec mk) { return mr ? V::fma(x, vscale, mk) : V::mul(x, vscale); };
    size_t j = 0;
    for (; j + L <= live; j += L) {
      const Vec v = scaled(V::load(sr + j), mr ? V::load(mr + j) : vscale);
      bad = V::mask_or(bad, V::ge_or_nan(v, pinf));
      vmax = V::max(v, vmax);
      V::store(sr + j, v);
    }
    if (j < live) {
      const Mask in = V::first(live - j);
      const Vec v = scaled(V::load_tail(sr + j, live - j), mr ? V::load_tail(mr + j, live - j) : vscale);
      bad = V::mask_or(bad, V::mask_and(in, V::ge_or_nan(v, pinf)));
      vmax = V::max(V::select(in, v, ninf), vmax);
      V::store_tail(sr + j, live - j, v);
    }
    const float m_old = m[r];
    const float tile_max = V::reduce_max(vmax);
    const float m_new = m_old > tile_max ? m_old : tile_max;
    const bool poisoned = V::any(bad) || std::isnan(m_old);
    rescale[r] = 1.0f;
    if (poisoned || m_new == -kInf) {  // NaN row, or nothing live yet
      if (poisoned) m[r] = l[r] = std::numeric_limits<float>::quiet_NaN();
      fill<V>(sr, cols, 0.0f);
      continue;
    }
    const Vec vm = V::set(m_new);
    Vec sum = V::set(0.0f);
    j = 0;
    for (; j + L <= live; j += L) {
      const Vec e = V::template exp_term<Order>(V::sub(V::load(sr + j), vm));
      sum = V::add(sum, e);
      V::store(sr + j, e);
    }
    if (j < live) {  // lanes past live are -inf: a term of 0
      const Vec e = V::template exp_term<Order>(V::sub(V::load_tail_or(sr + j, live - j, -kInf), vm));
      sum = V::add(sum, e);
      V::store_tail(sr + j, live - j, e);
    }
    fill<V>(sr + live, cols - live, 0.0f);
    if (m_new > m_old) rescale[r] = std::exp(m_old - m_new);  // m_old = -inf: 0
    l[r] = l[r] * rescale[r] + V::reduce_add(sum);
    m[r] = m_new;
  }
}

}  // namespace
}  // namespace simd_rows
}  // namespace quake
