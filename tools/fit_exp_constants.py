"""Recompute the constants of the com.quake exponential core.

    python tools/fit_exp_constants.py        # needs numpy and scipy

e^z = 2^t with t = z*log2(e) = i + f, i = floor(t), f in [0, 1).

order 1 (QuAKE / Schraudolph): the float's bits are one affine function of z,
    bits = round(2^23 * (t + 127 - shift)),
  so the exponent field gets floor(t - shift) + 127 and the mantissa the
  fraction: the value is 2^floor(u) * (1 + frac(u)) with u = t - shift.
  One free constant; `shift` is chosen by a dense search to minimise the
  maximum relative error over a period of t.
orders 2 and 3 (QuAKE2 and the cubic): the mantissa polynomial p(f) ~ 2^f,
  coefficients chosen by a linear program that minimises
  max |p(f) / 2^f - 1| over a dense grid of [0, 1] (the discrete minimax
  problem, linear in the coefficients). The reported error is re-measured
  with the coefficients rounded to float32 and evaluated in float32 by Horner.

The output is the block pasted into custom_ops/kernels/constants.h.
"""

from __future__ import annotations

import numpy as np


def fit_schraudolph_shift() -> tuple[float, float]:
    t = np.linspace(0.0, 1.0, 200_001)
    best_err, best_shift, half_width = np.inf, 0.0, 0.2
    for _ in range(4):  # coarse to fine: each round zooms 20x around the best
        for shift in np.linspace(best_shift - half_width, best_shift + half_width, 401):
            u = t - shift
            fl = np.floor(u)
            err = np.abs(2.0**fl * (1.0 + u - fl) / 2.0**t - 1.0).max()
            if err < best_err:
                best_err, best_shift = float(err), float(shift)
        half_width /= 20
    return best_shift, best_err


def fit_mantissa_poly(degree: int) -> tuple[np.ndarray, float]:
    from scipy.optimize import linprog

    f = np.linspace(0.0, 1.0, 20_001)
    v = np.stack([f**k / 2.0**f for k in range(degree + 1)], axis=1)
    ones = np.ones((len(f), 1))
    a_ub = np.vstack([np.hstack([v, -ones]), np.hstack([-v, -ones])])
    b_ub = np.concatenate([np.ones(len(f)), -np.ones(len(f))])
    cost = np.r_[np.zeros(degree + 1), 1.0]
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * (degree + 2), method="highs")
    coeffs = res.x[: degree + 1].astype(np.float32)
    # Re-measure in float32 Horner, as the kernels evaluate it.
    f32 = f.astype(np.float32)
    p = np.full_like(f32, coeffs[-1])
    for c in coeffs[-2::-1]:
        p = p * f32 + c
    err = float(np.abs(p.astype(np.float64) / 2.0 ** f32.astype(np.float64) - 1.0).max())
    return coeffs, err


def main() -> None:
    shift, err1 = fit_schraudolph_shift()
    scale = float(np.float32(2.0**23 / np.log(2.0)))
    offset = float(np.float32(2.0**23 * (127.0 - shift)))
    print(f"// order 1: shift = {shift:.6f}, max rel error {err1:.4e}")
    print(f"constexpr float kSchraudolphScale = {scale!r}f;  // 2^23 * log2(e)")
    print(f"constexpr float kSchraudolphOffset = {offset!r}f;  // 2^23 * (127 - shift)")
    for degree in (2, 3):
        coeffs, err = fit_mantissa_poly(degree)
        body = ", ".join(f"{float(c)!r}f" for c in coeffs)
        print(f"// order {degree}: max rel error {err:.4e} (float32 Horner)")
        print(f"constexpr float kExpPoly{degree}[{degree + 1}] = {{{body}}};")


if __name__ == "__main__":
    main()
