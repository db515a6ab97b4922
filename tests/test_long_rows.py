"""Softmax and LogSoftmax rows that take the long-row paths (softmax_long.h):
a few long rows cut into chunks over the threads ([1, 50257]: one vocabulary
row), and rows beyond half the L2 in two passes ([4, 140001]: 560 KB rows), in
float32 and float16 (whose few long rows are cut the same way, through float
buffers; its rows beyond L2 take the one-pass path). Against the float64
reference within the bounds of test_accuracy, rows summing to 1, the special
rows exact, and 1 and 2 threads agreeing within the summation bound."""

import numpy as np
import pytest
from helpers import assert_close, make_model, make_session, run
from test_accuracy import bound, check_rows_sum_to_one, check_special_rows

from quake_onnx import reference

F32 = np.float32
# Cut over the threads (fewer than 4 rows): one vocabulary row, three longer
# ones, two beyond half the L2; four rows beyond half the L2: two passes.
SHAPES = [(1, 50257), (3, 70001), (2, 300001), (4, 140001)]


def rows(shape, seed, dtype=F32):
    """Logits, a causal-style -inf mask, the type's lowest, a NaN row, a +inf
    row, all -inf, uniform: as many as the shape has rows, cycling."""
    r, n = shape
    rng = np.random.default_rng(seed)
    kinds = []
    for i in range(r):
        x = rng.standard_normal(n) * 4
        kind = (seed + i) % 7
        if kind == 1:
            x[rng.random(n) < 0.9] = -np.inf
        elif kind == 2:
            x[rng.random(n) < 0.5] = np.finfo(dtype).min
        elif kind == 3:
            x[rng.integers(n)] = np.nan
        elif kind == 4:
            x[rng.integers(n)] = np.inf
        elif kind == 5:
            x[:] = -np.inf
        elif kind == 6:
            x[:] = 0.5
        kinds.append(x)
    return np.array(kinds, dtype=dtype)


def threads_agree(y1, y2, dtype):
    """1 and 2 threads change only the float32 summation order: within 1e-6
    of the largest result, or (float16) one unit in the last place."""
    same = np.isfinite(y1) & np.isfinite(y2)
    assert (np.isnan(y1) == np.isnan(y2)).all()
    if not same.any():
        return
    a, b = y1[same].astype(np.float64), y2[same].astype(np.float64)
    if dtype == F32:
        assert np.abs(a - b).max() <= 1e-6 * max(1.0, float(np.abs(a).max()))
    else:
        ulp = np.spacing(np.maximum(np.abs(y1[same]), np.abs(y2[same]))).astype(np.float64)
        assert (np.abs(a - b) <= ulp).all()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("order", (1, 2, 3))
@pytest.mark.parametrize("op", ("Softmax", "LogSoftmax"))
@pytest.mark.parametrize("dtype", (F32, np.float16), ids=("float32", "float16"))
def test_two_pass_rows(session_cache, isa, op, order, shape, dtype):
    model = make_model(op, {"order": order}, ("R", "N"), dtype)
    for seed in range(0, 7, 1 if shape[0] == 1 else shape[0]):
        x = rows(shape, seed, dtype)
        y1 = run(session_cache(model, isa, 1), x)
        y2 = run(session_cache(model, isa, 2), x)
        ref = reference.REFERENCES[op]([x], {})
        assert_close(y1, ref, dtype, *bound(op, order, dtype), x=x, what=f"{op} {shape} seed {seed}")
        check_special_rows(op, x, y1)
        check_special_rows(op, x, y2)
        if op == "Softmax":
            check_rows_sum_to_one(y1, -1, dtype)
        threads_agree(y1, y2, dtype)


def test_in_place_and_single_thread_equal(isa):
    # One node whose input has no other reader: ORT may hand it the input buffer.
    x = rows((1, 50257), 0)
    sess = make_session(make_model("Softmax", {"order": 2}, ("R", "N"), F32), isa, 2)
    y = run(sess, x.copy())
    ref = reference.softmax(x)
    assert np.abs(y - ref).max() <= bound("Softmax", 2, F32)[0]


@pytest.mark.parametrize("offset", (3e6, 1e9, -4e12, 2e30))
@pytest.mark.parametrize("shape", [(1, 50257), (4, 140001), (37, 512)])
@pytest.mark.parametrize("op", ("Softmax", "LogSoftmax"))
def test_rows_with_a_large_max(session_cache, isa, op, shape, offset):
    # Logits far from 0: the base-2 terms (2^(x log2 e - k), k = floor(max
    # log2 e)) need an exact enough k, so rows whose max is beyond 2^22 take
    # the base-e terms; a max of 1e9 once made the max's own term overflow.
    # Every path: a row cut over the threads, two passes, and one pass.
    rng = np.random.default_rng(int(abs(offset)) % 1000)
    x = (rng.standard_normal(shape) * 4 + offset).astype(F32)
    y = run(session_cache(make_model(op, {"order": 2}, ("R", "N"), F32), isa, 2), x)
    ref = reference.REFERENCES[op]([x], {})
    abs_tol, rel_tol = bound(op, 2, F32)
    err = np.abs(y.astype(np.float64) - ref)
    assert np.isfinite(y).all() or op == "Softmax"
    assert (err <= abs_tol + rel_tol * np.abs(ref)).all(), f"{op} {shape} offset {offset:g}: {np.nanmax(err):.3g}"
