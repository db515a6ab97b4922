"""The range ends of every op against float64, exactly, on every kernel table,
order and type (issue: Exp gave +inf from x = 88.70 on, where e^x is finite
up to ln(FLT_MAX) = 88.7228, and 0 on (-87.34, -87.30], where e^x is still a
normal float).

The truth is float64 math rounded to the output type, not the kernels'
constants: a result is +inf exactly where the true value rounds to +inf in
the type; every true value that is a normal number of the type is met
within the op's bound (relative for Exp, Softmax and Sigmoid's left tail,
absolute for the others, ops.md); a true value below the type's smallest
normal (a subnormal) may come back as 0 (flushed), as any value below the
smallest normal, or within the bound, never as a larger normal. Inputs:
every float within a few hundred ulp of each range end, and float16's own
ends (e^x finite up to 65504)."""

import math

import numpy as np
import pytest
from helpers import make_model, run
from test_accuracy import BOUNDS, bound

F32, F16 = np.float32, np.float16
ORDERS = (1, 2, 3)
# Relative error of e^x per order and type: BOUNDS' Exp row (float16 adds
# its own rounding, 2^-11).
EXP_REL = {(o, t): BOUNDS[("Exp", o)][t][1] for o in ORDERS for t in (F32, F16)}


def around(points, dtype, ulps):
    """Every value of `dtype` within `ulps` steps of each point, sorted."""
    out = []
    for p in points:
        a = b = dtype(p)
        out.append(a)
        for _ in range(ulps):
            a = np.nextafter(a, dtype(-np.inf))
            b = np.nextafter(b, dtype(np.inf))
            out += [a, b]
    return np.unique(np.array(out, dtype=dtype))


def overflow_threshold(dtype) -> float:
    """Reals from here on round to +inf in `dtype`: max + half an ulp."""
    info = np.finfo(dtype)
    return float(info.max) + 2.0 ** (info.maxexp - info.nmant - 2)


# Where e^x leaves the normal range, in float32 and float16.
EXP_ENDS = {
    F32: [math.log(np.finfo(F32).tiny), math.log(overflow_threshold(F32)), -87.306, -103.9721, -103.2789],
    F16: [math.log(np.finfo(F16).tiny), math.log(overflow_threshold(F16)), -17.3287, -16.6355],
}


def check_exp_like(x, y, truth, rel, dtype, what):
    """The three rules of the module docstring for a result whose truth is `truth`."""
    y64 = y.astype(np.float64)
    inf = truth >= overflow_threshold(dtype)
    assert (y[inf] == np.inf).all(), f"{what}: x={x[inf][y[inf] != np.inf][:4]} should give +inf"
    assert np.isfinite(y[~inf]).all(), f"{what}: x={x[~inf][~np.isfinite(y[~inf])][:4]} should give finite values"
    assert not np.signbit(y).any(), f"{what}: negative results"
    tiny = float(np.finfo(dtype).tiny)
    normal = ~inf & (truth >= tiny)
    err = np.abs(y64[normal] - truth[normal]) / truth[normal]
    assert err.max(initial=0) <= rel, (
        f"{what}: rel error {err.max():.3g} > {rel:.3g} at x={x[normal][np.argmax(err)]!r}"
    )
    below = ~inf & (truth < tiny)
    half_step = float(np.finfo(dtype).smallest_subnormal) / 2  # the rounding of a subnormal result
    ok = (y64[below] < tiny) | (np.abs(y64[below] - truth[below]) <= rel * truth[below] + half_step)
    assert ok.all(), f"{what}: x={x[below][~ok][:4]} gave {y[below][~ok][:4]}, truth {truth[below][~ok][:4]}"


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("order", ORDERS)
def test_exp_range_ends(session_cache, isa, order, dtype):
    x = np.concatenate([around(EXP_ENDS[dtype], dtype, 300), np.array([-np.inf, np.inf], dtype)])
    y = run(session_cache(make_model("Exp", {"order": order}, ("N",), dtype), isa), x)
    with np.errstate(over="ignore"):
        truth = np.exp(x.astype(np.float64))
    check_exp_like(x, y, truth, EXP_REL[(order, dtype)], dtype, f"Exp order {order} {np.dtype(dtype).name}")
    # The two examples, by name.
    if dtype is F32:
        named = run(
            session_cache(make_model("Exp", {"order": order}, ("N",), dtype), isa),
            np.array([88.70, 88.72283, -87.32, -87.336548], F32),
        )
        assert np.isfinite(named).all() and (named > 3e38)[:2].all() and (named[2:] >= np.finfo(F32).tiny).all()


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("order", ORDERS)
def test_sigmoid_range_ends(session_cache, isa, order, dtype):
    ends = [-87.3365, -88.7228, 87.3365, 88.7228, -9.704, -17.33, 17.0]
    x = np.concatenate([around(ends, dtype, 200), np.array([-np.inf, np.inf], dtype)])
    y = run(session_cache(make_model("Sigmoid", {"order": order}, ("N",), dtype), isa), x)
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        truth = np.where(x64 < 0, np.exp(x64) / (1 + np.exp(x64)), 1 / (1 + np.exp(-x64)))
    assert y[x == np.inf][0] == 1 and y[x == -np.inf][0] < np.finfo(dtype).tiny
    left = x64 < -8  # ~e^x: the exponential's relative error
    check_exp_like(x[left], y[left], truth[left], EXP_REL[(order, dtype)], dtype, f"Sigmoid order {order}")
    abs_tol, _ = bound("Sigmoid", order, dtype)
    assert np.abs(y[~left].astype(np.float64) - truth[~left]).max() <= abs_tol


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("op, alpha", [("Silu", 1.0), ("Silu", 1.702), ("Silu", 0.37), ("Gelu", None)])
def test_silu_gelu_range_ends(session_cache, isa, op, alpha, order, dtype):
    attrs = {"order": order} if alpha is None else {"order": order, "alpha": alpha}
    a = 1.0 if alpha is None else alpha
    ends = [-87.3365 / a, -88.7228 / a, -92.8 / a, 88.7228 / a, -12.0, -10.2, 11.09, -11.09]
    x = np.concatenate(
        [
            around([e for e in ends if abs(e) < float(np.finfo(dtype).max)], dtype, 100),
            np.array([-np.inf, np.inf, np.finfo(dtype).max, np.finfo(dtype).min], dtype),
        ]
    )
    y = run(session_cache(make_model(op, attrs, ("N",), dtype), isa), x)
    from quake_onnx import reference

    truth = reference.silu(x, a) if op == "Silu" else reference.gelu(x)
    abs_tol, rel_tol = bound(op, order, dtype, a)
    assert (y[x == np.inf] == np.inf).all(), f"{op}(+inf)"
    assert np.isfinite(y[x != np.inf]).all(), f"{op}: non-finite results for finite x"
    finite = np.isfinite(truth)
    err = np.abs(y.astype(np.float64)[finite] - truth[finite])
    assert (err <= abs_tol + rel_tol * np.abs(truth[finite])).all(), f"{op}: error {err.max():.3g}"
    # The limit at -inf is 0 (up to the value at the clamp, 2.6e-37 / alpha), not NaN.
    assert abs(float(y[x == -np.inf][0])) < 2.7e-37 / min(a, 1.0)


def _pairs(d, dtype):
    """Rows [0, -d]: the second element is e^-d / (1 + e^-d)."""
    return np.stack([np.zeros_like(d), -d], axis=1).astype(dtype)


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("order", ORDERS)
def test_softmax_row_differences_near_the_ends(session_cache, isa, order, dtype):
    if dtype is F32:
        d = around([87.3365, 87.306, 88.7228, 103.97, 103.28], F32, 200)
    else:  # float16 results underflow first: e^-d below 2^-24 rounds to 0
        d = around([9.704, 16.6355, 17.3287], F16, 100)
    x = np.concatenate([_pairs(d, dtype), np.array([[0, 1e4], [0, -1e4]], dtype)]) if dtype is F32 else _pairs(d, dtype)
    y = run(session_cache(make_model("Softmax", {"order": order}, ("R", "N"), dtype), isa), x)
    x64 = x.astype(np.float64)
    z = x64 - x64.max(axis=1, keepdims=True)
    truth = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    # Per element e^z / S: the exponential's error twice (term and sum).
    check_exp_like(x.ravel(), y.ravel(), truth.ravel(), 2 * EXP_REL[(order, dtype)], dtype, f"Softmax order {order}")
    ly = run(session_cache(make_model("LogSoftmax", {"order": order}, ("R", "N"), dtype), isa), x)
    ltruth = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    abs_tol, rel_tol = bound("LogSoftmax", order, dtype)
    assert np.isfinite(ly).all()
    assert (np.abs(ly.astype(np.float64) - ltruth) <= abs_tol + rel_tol * np.abs(ltruth)).all()
