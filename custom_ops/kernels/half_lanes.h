// float16 lanes: Exp, Sigmoid, Silu and Gelu (tanh form, without B) computed
// in float16 arithmetic, for CPUs that have it (AVX512-FP16: 32 lanes per
// register, no conversions). Written once over a vector layer V whose every
// operation rounds once to float16 (round to nearest even), as AVX512-FP16
// does: kernels_avx512fp16.cc instantiates it on zmm registers, and the C++
// tests on a scalar layer that emulates float16 rounding exactly, so the
// algorithm's error is tested on every machine and the ISA file is tested
// bit for bit against it where the CPU (or an emulator) has AVX512-FP16.
//
// The exponential: t = x log2(e) = n + r with n = round(fl(x L_hi)) and
// r = x L_hi - n + x L_lo in two FMAs (L_hi + L_lo = log2(e) to 2^-22, so
// r is rounded to float16 as itself, never through a rounded t), 2^r from a
// polynomial on [-0.52, 0.52]
// (minimax relative on [-1/2, 1/2], coefficients rounded to float16), then
// VSCALEFPH: e^x = p(r) 2^n, subnormal results rounded once. Order 1 takes
// the quadratic, order 2 the cubic; order 3 stays in float32 lanes, whose
// float16 bounds (5.8e-4 relative for Exp) float16 arithmetic cannot meet.
//
// Sigmoid, Silu and Gelu use e = e^-|v| (never above 1) and
//   yp = 1 / (1 + e) refined by one Newton step on the unrounded 1 + e
//        (y0 = 1 / fl(1 + e), yp = y0 + y0 (1 - y0 - e y0)),
//   w = e yp = sigmoid(-|v|),
// so sigmoid(v) = yp (v >= 0) or w (v < 0), and a product x sigmoid(v) is
// x - x w (v > 0: one rounding, where fl(sigmoid) times x would cost half
// an ulp of sigmoid times x) or x w. Without this, the rounding of 1 + e
// alone (2^-11 relative) takes Sigmoid beyond order 2's float16 bound.
//
// Error over every float16 input (custom_ops/tests/test_kernels.cc, the
// emulated layer against long double), measured / bound, the bounds being
// the float16 ones of tests/test_accuracy.py (ops.md's float32 bound of the
// order plus the rounding of Y):
//   op       order 1                          order 2
//   Exp      2.8e-3 / 3.05e-2 relative        7.9e-4 / 2.3e-3 relative
//   Sigmoid  9.2e-4 / 8.3e-3 absolute         3.9e-4 / 7.1e-4 absolute
//   Silu     5.9e-4 / 7.5e-3 absolute beyond  1.9e-4 / 6.7e-4 absolute beyond
//            2^-11 relative (alpha < 1: the   2^-11 relative
//            absolute part / alpha)
//   Gelu     4.3e-4 / 4.7e-3, the same way    1.9e-4 / 5.1e-4, the same way
// (Exp relative to 2^-14 below it: results there are float16 subnormals,
// 2^-25 absolute rounding).
// Special values as the float32 lanes give them in float16: Exp +inf from
// x = 11.09375 on and at most 65504 below it, +0 for x <= -17.33 and -inf;
// Sigmoid(+-inf) = 1 / 0; Silu and Gelu(+inf) = +inf, (-inf) = -0,
// (+-0) = +-0; NaN -> NaN everywhere.
#pragma once

namespace quake {
namespace half_lanes {

// log2(e) split into two float16 values: hi = fl16(log2 e), lo = fl16(log2 e - hi).
constexpr float kLog2eHi = 1.4423828125f;
constexpr float kLog2eLo = 0.0003123283386230469f;
// 2^r on [-1/2, 1/2], lowest degree first, each coefficient a float16.
constexpr float kPoly2[3] = {1.0f, 0.70361328125f, 0.2384033203125f};
constexpr float kPoly3[4] = {1.0f, 0.693359375f, 0.2425537109375f, 0.05517578125f};
// Exp's argument is clamped into [kExpLow, kExpHigh] before the core: below,
// e^x rounds to 0 in float16; above, the result is +inf by the range rule.
constexpr float kExpLow = -18.0f;
constexpr float kExpHigh = 12.0f;
constexpr float kExpInfFrom = 11.09375f;  // e^x rounds to +inf in float16 from here (constants.h)
constexpr float kHalfMax = 65504.0f;
// |v| of the sigmoid is clamped here: e^-18 rounds to 0 in float16.
constexpr float kSigmoidArgMax = 18.0f;
// GELU's tanh form as a sigmoid, constants rounded to float16.
constexpr float kGeluK1 = 1.595703125f;       // 2 sqrt(2 / pi)
constexpr float kGeluK3 = 0.07135009765625f;  // 2 sqrt(2 / pi) 0.044715
constexpr float kGeluLow = -12.0f;            // keeps u^3 finite; gelu(-12) = -0 in float16

// V: using Vec, Mask; set(float) (the float is a float16 value); add, sub,
// mul, div, fma(a, b, c) = a b + c, fnma(a, b, c) = c - a b; min(a, b) and
// max(a, b) returning b when either is NaN (as VMINPH / VMAXPH); abs;
// round_int (to nearest even); scalef(p, n) = p 2^n; lt, ge (false on NaN);
// select(m, a, b) = m ? a : b.

// p(r) 2^n for the reduced t = n + r of x; x in [kExpLow, kExpHigh] or NaN.
template <class V, int Order>
typename V::Vec exp_core(typename V::Vec x) {
  using Vec = typename V::Vec;
  const Vec n = V::round_int(V::mul(x, V::set(kLog2eHi)));
  Vec r = V::fma(x, V::set(kLog2eHi), V::sub(V::set(0.0f), n));
  r = V::fma(x, V::set(kLog2eLo), r);
  Vec p;
  if constexpr (Order == 1) {
    p = V::fma(V::fma(V::set(kPoly2[2]), r, V::set(kPoly2[1])), r, V::set(kPoly2[0]));
  } else {
    static_assert(Order == 2, "float16 lanes have orders 1 and 2");
    p = V::fma(V::set(kPoly3[3]), r, V::set(kPoly3[2]));
    p = V::fma(p, r, V::set(kPoly3[1]));
    p = V::fma(p, r, V::set(kPoly3[0]));
  }
  return V::scalef(p, n);
}

template <class V, int Order>
typename V::Vec exp(typename V::Vec x) {
  using Vec = typename V::Vec;
  const Vec xc = V::min(V::set(kExpHigh), V::max(V::set(kExpLow), x));  // NaN stays (second operands)
  const Vec e = V::min(V::set(kHalfMax), exp_core<V, Order>(xc));
  return V::select(V::ge(x, V::set(kExpInfFrom)), V::set(__builtin_inff()), e);
}

// sigmoid(|v|) and sigmoid(-|v|) (module comment).
template <class V, int Order>
void sigmoid_pair(typename V::Vec v, typename V::Vec* yp, typename V::Vec* w) {
  using Vec = typename V::Vec;
  const Vec a = V::min(V::set(kSigmoidArgMax), V::abs(v));
  const Vec e = exp_core<V, Order>(V::sub(V::set(0.0f), a));
  const Vec y0 = V::div(V::set(1.0f), V::add(V::set(1.0f), e));
  const Vec t = V::fnma(e, y0, V::sub(V::set(1.0f), y0));  // 1 - (1 + e) y0, 1 - y0 exact for y0 in [1/2, 1]
  *yp = V::fma(y0, t, y0);
  *w = V::mul(e, *yp);
}

template <class V, int Order>
typename V::Vec sigmoid(typename V::Vec x) {
  typename V::Vec yp, w;
  sigmoid_pair<V, Order>(x, &yp, &w);
  return V::select(V::lt(x, V::set(0.0f)), w, yp);
}

// x sigmoid(v): x - x w for v > 0, x w otherwise (v = +-0 included: w = 1/2
// there and x w keeps the sign of a zero x, where -0 - (-0) would give +0);
// x is clamped to the finite range only inside the products, so +inf gives
// +inf and -inf gives -0.
template <class V, int Order>
typename V::Vec times_sigmoid(typename V::Vec x, typename V::Vec v) {
  using Vec = typename V::Vec;
  Vec yp, w;
  sigmoid_pair<V, Order>(v, &yp, &w);
  const Vec xc = V::min(V::set(kHalfMax), V::max(V::set(-kHalfMax), x));
  return V::select(V::lt(V::set(0.0f), v), V::fnma(xc, w, x), V::mul(xc, w));
}

// alpha: a float16 value (the op's alpha rounded to float16).
template <class V, int Order>
typename V::Vec silu(typename V::Vec x, typename V::Vec alpha, bool unit_alpha) {
  return times_sigmoid<V, Order>(x, unit_alpha ? x : V::mul(x, alpha));
}

template <class V, int Order>
typename V::Vec gelu(typename V::Vec u) {
  using Vec = typename V::Vec;
  u = V::max(V::set(kGeluLow), u);
  const Vec v = V::mul(u, V::fma(V::set(kGeluK3), V::mul(u, u), V::set(kGeluK1)));
  return times_sigmoid<V, Order>(u, v);
}

}  // namespace half_lanes
}  // namespace quake
