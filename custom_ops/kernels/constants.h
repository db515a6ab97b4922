// Scalar constants of the com.quake exponential core. Plain floats only: each
// ISA file broadcasts them into registers inside its kernels (no SIMD values
// at static scope, so no ISA instruction runs before dispatch has chosen).
// Regenerate with `python tools/fit_exp_constants.py`.
#pragma once

namespace quake {

constexpr float kLog2e = 1.44269504088896341f;
constexpr double kLog2eD = 1.4426950408889634;
constexpr double kLn2D = 0.6931471805599453;

// Range of the exponential core (ops.md), exact at both ends in float32:
// with t = fl(z * kLog2e) (+ kExpTBias, below), the core is valid for -126 <= t < 128, where
// 2^floor(t) is a normal float and p(f) * 2^floor(t) is finite.
//  * z <= kExpUnderflow gives +0. -87.336555f is the largest float with
//    t < -126: e^z < FLT_MIN there (a subnormal, flushed); every z above it
//    has e^z >= FLT_MIN (the next float, -87.33655f, has t = -126 exactly).
//  * z >= kExpOverflow gives +inf. 88.72284f is the smallest float whose e^z
//    rounds to +inf (e^z > FLT_MAX + ulp/2) and the smallest with t >= 128;
//    e^88.72283f = 3.40280e38 is finite, and so is the core's result there.
constexpr float kExpUnderflow = -87.336555f;
constexpr float kExpOverflow = 88.72284f;
// Exponent arguments the core computes without range fixups: the smallest
// float with t >= -126 and the largest with t < 128. Sigmoid-based ops clamp
// the argument of their e^z into [kExpMinArg, kExpMaxArg], the core's whole
// range: every normal result keeps the core's error, 1 / (1 + e^88.72283) =
// 2.9e-39 is already below FLT_MIN, and 1 / (1 + e^-87.33655) = 1 exactly.
constexpr float kExpMinArg = -87.33655f;
constexpr float kExpMaxArg = 88.72283f;
// The core's t is fl(z * kLog2e + kExpTBias), one FMA, in the scalar, AVX2
// and NEON tables (AVX-512's core goes without: kernels_avx512.cc): the bias
// keeps t a normal float where z is subnormal. A subnormal t computed
// and then consumed by the floor, subtraction and Horner FMAs ran the AVX2
// core at 2.7 instead of 10 Gelem/s on Zen 4 (on one vCPU or the other, from
// hour to hour), while the same instructions on subnormal loads ran at full
// speed; with the bias, 9.9 on subnormal and normal inputs alike. For z
// subnormal or zero the result is p(0) exactly (t is about 2^-110, and before,
// z in (-2^-110.5, 0) gave p(1) / 2 instead); t changes only for |z| below
// about 2^-84 and the result only for z in (-2^-110.5, 0) (checked over every
// float of the core's range: errors and range ends unchanged,
// tests/test_range_ends.py).
constexpr float kExpTBias = 0x1p-110f;

// order 1 (QuAKE / Schraudolph): bits = round(z * scale + offset),
// shift = 0.043678, max relative error 2.9821e-02.
constexpr float kSchraudolphScale = 12102203.0f;     // 2^23 * log2(e)
constexpr float kSchraudolphOffset = 1064986816.0f;  // 2^23 * (127 - shift)
// The bits of FLT_MIN. Schraudolph's bits fall below it for z < -87.306
// (t < -126 + shift) although e^z >= FLT_MIN down to kExpUnderflow; raising
// the bits to it there gives FLT_MIN, within the order's error (at most
// 1 - 2^-shift = 2.98e-2, at z = -87.306), instead of a subnormal pattern.
constexpr float kSchraudolphMinBits = 8388608.0f;  // 2^23

// orders 2 and 3 (QuAKE2, cubic): p(f) ~ 2^f on [0, 1), minimax relative
// error, coefficients lowest degree first.
// order 2: max relative error 1.7248e-03 (float32 Horner)
constexpr float kExpPoly2[3] = {1.0017247200012207f, 0.657636284828186f, 0.3371894359588623f};
// order 3: max relative error 7.4862e-05 (float32 Horner)
constexpr float kExpPoly3[4] = {0.9999251961708069f, 0.695833683013916f, 0.22606660425662994f, 0.07802491635084152f};
// Order 3 takes max(p(f), 1): p(0) = 0.99993 < 1 would make t = -126 + tiny
// (e^z just above FLT_MIN) a subnormal bit pattern that loses p's leading
// bit (error 1.5e-4). On f < 1.1e-4, where p < 1, 1 is within 7.6e-5 of 2^f.
constexpr float kExpPoly3Floor = 1.0f;

// GELU (tanh form as sigmoid): x * sigmoid(kGeluK1 * x + kGeluK3 * x^3).
constexpr float kGeluK1 = 1.5957691216057308f;              // 2 * sqrt(2 / pi)
constexpr float kGeluK3 = 1.5957691216057308f * 0.044715f;  // 2 * sqrt(2 / pi) * 0.044715
// Below this the GELU is 0 to float precision; clamping u keeps u^3 and the
// product finite so -inf gives -0 rather than NaN.
constexpr float kGeluLow = -12.0f;

// float16 Exp: the float32 core's relative error must not move a result
// across float16's overflow. e^x rounds to +inf in float16 from
// x = 11.09375 on (the first half above ln(65520) = 11.0902) and stays finite
// up to 11.0859375 (e^x = 65237): results below are capped at 65504, inputs
// from it on give +inf, exactly as the true value rounds.
constexpr float kHalfExpInfFrom = 11.09375f;
constexpr float kHalfMax = 65504.0f;

}  // namespace quake
