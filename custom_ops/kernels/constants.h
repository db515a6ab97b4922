// Scalar constants of the com.quake exponential core. Plain floats only: each
// ISA file broadcasts them into registers inside its kernels (no SIMD values
// at static scope, so no ISA instruction runs before dispatch has chosen).
// Regenerate with `python tools/fit_exp_constants.py`.
#pragma once

namespace quake {

constexpr float kLog2e = 1.44269504088896341f;

// Range of the exponential core (ops.md): z <= kExpUnderflow gives +0,
// z >= kExpOverflow gives +inf. Between them 2^floor(t) is a normal float.
constexpr float kExpUnderflow = -87.3f;
constexpr float kExpOverflow = 88.7f;

// order 1 (QuAKE / Schraudolph): bits = round(z * scale + offset),
// shift = 0.043678, max relative error 2.9821e-02.
constexpr float kSchraudolphScale = 12102203.0f;     // 2^23 * log2(e)
constexpr float kSchraudolphOffset = 1064986816.0f;  // 2^23 * (127 - shift)

// orders 2 and 3 (QuAKE2, cubic): p(f) ~ 2^f on [0, 1), minimax relative
// error, coefficients lowest degree first.
// order 2: max relative error 1.7248e-03 (float32 Horner)
constexpr float kExpPoly2[3] = {1.0017247200012207f, 0.657636284828186f, 0.3371894359588623f};
// order 3: max relative error 7.4862e-05 (float32 Horner)
constexpr float kExpPoly3[4] = {0.9999251961708069f, 0.695833683013916f, 0.22606660425662994f,
                                0.07802491635084152f};

// Sigmoid-based ops clamp the exponent argument into [-kSigmoidClamp,
// kSigmoidClamp]: inside the exact-core range, and sigmoid is 0 or 1 to
// float precision outside it.
constexpr float kSigmoidClamp = 87.0f;

// GELU (tanh form as sigmoid): x * sigmoid(kGeluK1 * x + kGeluK3 * x^3).
constexpr float kGeluK1 = 1.5957691216057308f;                 // 2 * sqrt(2 / pi)
constexpr float kGeluK3 = 1.5957691216057308f * 0.044715f;     // 2 * sqrt(2 / pi) * 0.044715
// Below this the GELU is 0 to float precision; clamping u keeps u^3 and the
// product finite so -inf gives -0 rather than NaN.
constexpr float kGeluLow = -12.0f;

}  // namespace quake
