// The elementwise float32 and float16 kernels of every SIMD table (Exp,
// Sigmoid, Silu, Gelu with its optional bias, Glu), written once over a thin
// per-ISA vector layer V and instantiated by kernels_avx512.cc,
// kernels_avx2.cc and kernels_neon.cc, each with its own compiler flags.
// The algorithms, ranges, errors and special values are those of the scalar
// definition (kernels_scalar.cc, docs/ops.md); float16 elements are converted
// to float in the register on load and rounded once on store, so a float16
// kernel is its float kernel's arithmetic with one rounding at the end.
//
// V (each ISA file's `Lanes`):
//   Vec, Mask; kLanes floats per Vec;
//   load(p), store(p, v) for float and uint16_t (float16) pointers;
//   load_tail(p, rem), store_tail(p, rem, v) for the last rem < kLanes
//     elements: lanes past rem load 0 and are never stored, nothing past
//     p + rem is read or written;
//   set(float), add, sub, mul, div, fma(a, b, c) = a b + c in one rounding;
//   min(a, b), max(a, b) returning b where either is NaN (x86) or NaN
//     (AArch64): with the value second, a clamp keeps NaN either way;
//   ge(a, b) (false on NaN), is_nan(v), select(m, a, b) = m ? a : b;
//   exp<Order>(z): e^z with ops.md's whole range contract (+0 at and below
//     kExpUnderflow and for -inf, +inf from kExpOverflow on, NaN -> NaN);
//   exp_neg_core<Order>(v): e^-v for v in [-kExpMaxArg, -kExpMinArg], or
//     for every v (+-inf, NaN -> NaN included) where kSaturatingCore<Order>
//     (AVX-512 orders 2 and 3: VSCALEFPS saturates 2^t to +inf and +0); the
//     order-1 cores map NaN to -0 (x86's integer conversion) or +0
//     (AArch64's FCVTNS).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "constants.h"
#include "kernels.h"

namespace quake {
namespace elementwise {
// Internal linkage: each ISA file compiles its own copy with its own flags.
namespace {

// y[i] = f(x[i]); two registers per iteration, the tail through load_tail.
template <class V, typename T, typename F>
inline void map(const T* x, T* y, size_t n, F f) {
  constexpr size_t L = V::kLanes;
  size_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    const typename V::Vec a = V::load(x + i);
    const typename V::Vec b = V::load(x + i + L);
    V::store(y + i, f(a));
    V::store(y + i + L, f(b));
  }
  for (; i + L <= n; i += L) V::store(y + i, f(V::load(x + i)));
  if (i < n) V::store_tail(y + i, n - i, f(V::load_tail(x + i, n - i)));
}

// y[i] = f(a[i], b[i]); a and b may differ in type (Gelu's bias is float).
template <class V, typename T, typename TB, typename F>
inline void map2(const T* a, const TB* b, T* y, size_t n, F f) {
  constexpr size_t L = V::kLanes;
  size_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    const typename V::Vec r0 = f(V::load(a + i), V::load(b + i));
    const typename V::Vec r1 = f(V::load(a + i + L), V::load(b + i + L));
    V::store(y + i, r0);
    V::store(y + i + L, r1);
  }
  for (; i + L <= n; i += L) V::store(y + i, f(V::load(a + i), V::load(b + i)));
  if (i < n) V::store_tail(y + i, n - i, f(V::load_tail(a + i, n - i), V::load_tail(b + i, n - i)));
}

template <class V>
inline typename V::Vec clamp_keep_nan(typename V::Vec v, float lo, float hi) {
  return V::min(V::set(hi), V::max(V::set(lo), v));
}

// 1 + e^-v. The argument is clamped into the core's range unless the core
// saturates by itself; Always clamps in any case (Glu's Gelu gate: a gate
// that stays the scalar's tiny -3.5e-38 below u = -9.9, not -0, makes an
// infinite b give the same infinity on every table).
template <class V, int Order, bool Always = false>
inline typename V::Vec one_plus_exp_neg(typename V::Vec v) {
  if constexpr (Always || !V::template kSaturatingCore<Order>) v = clamp_keep_nan<V>(v, -kExpMaxArg, -kExpMinArg);
  return V::add(V::set(1.0f), V::template exp_neg_core<Order>(v));
}

// x sigmoid(alpha x) = x / (1 + e^(-alpha x)) in one division; x below
// -88.72 / alpha is raised to it (the result is ~0 there) so -inf gives ~-0
// instead of NaN.
template <class V, int Order, bool UnitAlpha>
inline typename V::Vec silu_vec(typename V::Vec x, typename V::Vec lo, typename V::Vec alpha) {
  const typename V::Vec v = V::max(lo, x);
  return V::div(v, one_plus_exp_neg<V, Order>(UnitAlpha ? v : V::mul(v, alpha)));
}

// u sigmoid(u (K1 + K3 u^2)) (the tanh form) in one division; u below -12
// is raised to it (keeps u^3 finite: -inf -> ~-0).
template <class V, int Order, bool AlwaysClamp = false>
inline typename V::Vec gelu_vec(typename V::Vec u) {
  u = V::max(V::set(kGeluLow), u);
  const typename V::Vec v = V::mul(u, V::fma(V::set(kGeluK3), V::mul(u, u), V::set(kGeluK1)));
  return V::div(u, one_plus_exp_neg<V, Order, AlwaysClamp>(v));
}

// float16 Exp's own range (constants.h): +inf from x = kHalfExpInfFrom on,
// at most kHalfMax below it; float results pass unchanged.
template <class V, typename T>
inline typename V::Vec exp_range_of(typename V::Vec x, typename V::Vec e) {
  if constexpr (std::is_same_v<T, float>) {
    return e;
  } else {
    const typename V::Vec capped = V::min(V::set(kHalfMax), e);  // a NaN e stays NaN
    return V::select(V::ge(x, V::set(kHalfExpInfFrom)), V::set(__builtin_inff()), capped);
  }
}

// Exp: order 1/2/3 relative error 2.99e-2 / 1.73e-3 / 7.5e-5 plus the
// rounding of z log2(e) near |z| = 88; -inf and z <= kExpUnderflow -> +0,
// z >= kExpOverflow and +inf -> +inf, NaN -> NaN (float16: its own range,
// exp_range_of).
template <class V, int Order, typename T>
void exp_quake(const T* x, T* y, size_t n) {
  map<V>(x, y, n, [](typename V::Vec v) { return exp_range_of<V, T>(v, V::template exp<Order>(v)); });
}

// Sigmoid = 1 / (1 + e^-x): abs error about a quarter of the core's
// relative error. -inf -> 0 (at most 1.6e-38 where the core clamps),
// +inf -> 1; NaN -> NaN at every order (the order-1 core maps NaN to +-0, so
// NaN lanes are restored).
template <class V, int Order, typename T>
void sigmoid_quake(const T* x, T* y, size_t n) {
  map<V>(x, y, n, [](typename V::Vec v) {
    const typename V::Vec r = V::div(V::set(1.0f), one_plus_exp_neg<V, Order>(v));
    if constexpr (Order == 1) return V::select(V::is_nan(v), v, r);
    return r;
  });
}

// Silu = x sigmoid(alpha x) (silu_vec); +inf -> +inf, -inf -> ~-0,
// NaN -> NaN. alpha = 1 (SiLU proper) skips the product.
template <class V, int Order, typename T>
void silu_quake(const T* x, T* y, size_t n, float alpha) {
  const typename V::Vec lo = V::set(-kExpMaxArg / alpha), va = V::set(alpha);
  if (alpha == 1.0f)
    return map<V>(x, y, n, [lo, va](typename V::Vec v) { return silu_vec<V, Order, true>(v, lo, va); });
  map<V>(x, y, n, [lo, va](typename V::Vec v) { return silu_vec<V, Order, false>(v, lo, va); });
}

// Gelu (tanh form) of x + bias (bias float, or null), one pass: abs error
// about 0.17x the core's relative error times |u| near the knee;
// +inf -> +inf, -inf -> ~-0, NaN -> NaN.
template <class V, int Order, typename T>
void gelu_quake(const T* x, const float* bias, T* y, size_t n) {
  using Vec = typename V::Vec;
  if (bias == nullptr) return map<V>(x, y, n, [](Vec u) { return gelu_vec<V, Order>(u); });
  map2<V>(x, bias, y, n, [](Vec u, Vec b) { return gelu_vec<V, Order>(V::add(u, b)); });
}

// Glu: y = act(a) b, the scalar definition (kernels_scalar.cc: range, error,
// special values) with the gate as Silu and Gelu compute it, then the
// product. In place: y may be a or b.
template <class V, int Order, typename T>
void glu_quake(const T* a, const T* b, T* y, size_t n, GluActivation act, float alpha) {
  using Vec = typename V::Vec;
  if (act == GluActivation::kSilu) {
    const Vec lo = V::set(-kExpMaxArg / alpha), va = V::set(alpha);
    return map2<V>(a, b, y, n, [lo, va](Vec av, Vec bv) { return V::mul(silu_vec<V, Order, false>(av, lo, va), bv); });
  }
  map2<V>(a, b, y, n, [](Vec av, Vec bv) { return V::mul(gelu_vec<V, Order, true>(av), bv); });
}

}  // namespace
}  // namespace elementwise
}  // namespace quake
