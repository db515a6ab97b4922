"""Accuracy of the com.quake kernels against the float64 reference, on every
kernel table this CPU has (QUAKE_ISA), every order, float and float16."""

import numpy as np
import pytest
from helpers import assert_close, band_samples, logits, make_model, run, special_values

from quake_onnx import reference
from quake_onnx.twin import twin_session

F32, F16 = np.float32, np.float16
ORDERS = (1, 2, 3)
DTYPES = (F32, F16)
ELEMENTWISE = ("Exp", "Sigmoid", "Silu", "Gelu")
ROWWISE = ("Softmax", "LogSoftmax")

# Error bounds: (abs, rel) per op, order and output type; an element passes
# when |got - ref| <= abs + rel * |ref|. Measured maxima are a little below
# (see the exp-core errors 2.98e-2 / 1.73e-3 / 7.84e-5 and their images:
# sigmoid <= err/4, silu <= 0.224 err, gelu <= 0.135 err, softmax <= err/2,
# logsoftmax <= err). The float32 rel terms are float rounding of large
# outputs (2^-23). float16 = float32 bound + the half rounding of the output:
# 2^-12 absolute below 1 (2.44e-4), 2^-11 relative above, 2^-25 for half
# subnormals (Exp). ops.md (float, order 2): Softmax 2e-3, Sigmoid/Silu 1e-3,
# Gelu 2e-3, Exp rel 0.2 %; order 1 ~15x looser, order 3 ~20x tighter.
BOUNDS = {
    #  op           order  float32             float16
    ("Exp", 1): {F32: (0, 3.0e-2), F16: (3.0e-8, 3.05e-2)},
    ("Exp", 2): {F32: (0, 1.8e-3), F16: (3.0e-8, 2.3e-3)},
    ("Exp", 3): {F32: (0, 8.0e-5), F16: (3.0e-8, 5.8e-4)},
    ("Sigmoid", 1): {F32: (8.0e-3, 0), F16: (8.3e-3, 0)},
    ("Sigmoid", 2): {F32: (4.6e-4, 0), F16: (7.1e-4, 0)},
    ("Sigmoid", 3): {F32: (2.0e-5, 0), F16: (2.7e-4, 0)},
    ("Silu", 1): {F32: (7.2e-3, 1.2e-7), F16: (7.5e-3, 4.9e-4)},
    ("Silu", 2): {F32: (4.2e-4, 1.2e-7), F16: (6.7e-4, 4.9e-4)},
    ("Silu", 3): {F32: (1.8e-5, 1.2e-7), F16: (2.7e-4, 4.9e-4)},
    ("Gelu", 1): {F32: (4.4e-3, 1.2e-7), F16: (4.7e-3, 4.9e-4)},
    ("Gelu", 2): {F32: (2.6e-4, 1.2e-7), F16: (5.1e-4, 4.9e-4)},
    ("Gelu", 3): {F32: (1.2e-5, 1.2e-7), F16: (2.6e-4, 4.9e-4)},
    ("Softmax", 1): {F32: (1.6e-2, 0), F16: (1.63e-2, 0)},
    ("Softmax", 2): {F32: (9.0e-4, 0), F16: (1.15e-3, 0)},
    ("Softmax", 3): {F32: (4.0e-5, 0), F16: (2.9e-4, 0)},
    ("LogSoftmax", 1): {F32: (3.1e-2, 1.2e-7), F16: (3.13e-2, 4.9e-4)},
    ("LogSoftmax", 2): {F32: (1.8e-3, 1.2e-7), F16: (2.2e-3, 4.9e-4)},
    ("LogSoftmax", 3): {F32: (1.0e-4, 1.2e-7), F16: (3.6e-4, 4.9e-4)},
}
# Against the erf form Gelu also carries the tanh form's own gap (ops.md).
GELU_ERF_GAP = 4.8e-4
# Softmax rows sum to 1 within this (ops.md: 1e-5 for float). float16: each
# output also rounds by 2^-11 relative, or 2^-25 absolute when subnormal.
ROW_SUM = {F32: 1e-5, F16: lambda n: 1e-5 + 2**-11 + n * 2**-25}
# The rounding of a result to its type (abs for subnormals, rel): comparing
# with the twin's rounded output, both sides carry one.
ROUNDING = {F32: (0.0, 2**-24), F16: (2**-25, 2**-11)}


def bound(op, order, dtype, alpha=1.0):
    abs_tol, rel_tol = BOUNDS[(op, order)][dtype]
    # silu's error x * sigmoid'(alpha x) * err peaks at 0.224 err / alpha.
    return abs_tol * max(1.0, 1.0 / alpha), rel_tol


def check_rows_sum_to_one(y, axis, dtype):
    s = np.moveaxis(y.astype(np.float64), axis, -1).sum(-1)
    live = np.isfinite(s) & (s != 0)  # NaN rows and fully masked rows aside
    n = y.shape[axis]
    tol = ROW_SUM[dtype] if dtype is F32 else ROW_SUM[dtype](n)
    worst = np.abs(s[live] - 1).max(initial=0.0)
    assert worst <= tol, f"row sums off by {worst:.3g} > {tol:.3g}"


def check(sess, op, order, dtype, x, bias=None, attrs=None, what=""):
    attrs = attrs or {}
    y = run(sess, x, bias)
    inputs = [x] if bias is None else [x, bias]
    ref = reference.REFERENCES[op](inputs, attrs)
    assert_close(
        y,
        ref,
        dtype,
        *bound(op, order, dtype, attrs.get("alpha", 1.0)),
        x=x,
        what=f"{op} order {order} {np.dtype(dtype).name} {what}",
    )
    return y


def dense(dtype):
    """Fine grids over the ranges where the approximations are busy."""
    return np.concatenate([np.linspace(-90, 90, 60001), np.linspace(-8, 8, 20001)]).astype(dtype)


# ---------------------------------------------------------------------------
# Elementwise ops.


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("op", ELEMENTWISE)
def test_elementwise_all_bands(session_cache, isa, op, order, dtype):
    sess = session_cache(make_model(op, {"order": order}, ("N",), dtype), isa)
    check(sess, op, order, dtype, band_samples(dtype, per_band=24), what="bands")
    check(sess, op, order, dtype, dense(dtype), what="dense")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [1.702, 0.25, 3.0])
def test_silu_alpha(session_cache, isa, alpha, dtype):
    attrs = {"alpha": alpha, "order": 2}
    sess = session_cache(make_model("Silu", attrs, ("N",), dtype), isa)
    for x in (band_samples(dtype), dense(dtype)):
        check(sess, "Silu", 2, dtype, x, attrs=attrs, what=f"alpha {alpha}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ORDERS)
def test_gelu_bias(session_cache, isa, order, dtype):
    rng = np.random.default_rng(order)
    for n in (67, 1000, 1030):  # 1030 > the float16 conversion block
        sess = session_cache(make_model("Gelu", {"order": order}, ("R", "C"), dtype, with_bias=True), isa)
        x = (rng.standard_normal((9, n)) * 4).astype(dtype)
        b = (rng.standard_normal(n) * 2).astype(dtype)
        y = check(sess, "Gelu", order, dtype, x, b, what=f"bias, {n} columns")
        no_bias = reference.gelu(x)
        assert np.abs(y - no_bias).max() > 0.1, "the bias made no difference"


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_tanh_and_erf_forms(session_cache, isa, dtype):
    # Both attribute values compute the tanh formula; against the erf form
    # (what approximate="none" meant in the replaced node) the gap adds.
    x = np.concatenate([dense(dtype), band_samples(dtype)])
    ys = [run(session_cache(make_model("Gelu", {"approximate": a}, ("N",), dtype), isa), x) for a in ("none", "tanh")]
    np.testing.assert_array_equal(ys[0], ys[1])
    abs_tol, rel_tol = bound("Gelu", 2, dtype)
    assert_close(
        ys[0],
        reference.gelu(x, approximate="none"),
        dtype,
        abs_tol + GELU_ERF_GAP,
        rel_tol,
        x=x,
        what="Gelu vs the erf form",
    )
    grid = np.linspace(-10, 10, 200001)
    gap = np.abs(reference.gelu(grid, approximate="tanh") - reference.gelu(grid, approximate="none")).max()
    assert 4.5e-4 < gap <= GELU_ERF_GAP  # the stated gap is the real one


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ORDERS)
def test_special_values_exact(session_cache, isa, order, dtype):
    info = np.finfo(dtype)
    x = np.array([np.nan, -np.inf, np.inf, -87.336555, 88.72284, info.min, info.max, 0.0, -0.0], dtype=dtype)
    sess = {op: session_cache(make_model(op, {"order": order}, ("N",), dtype), isa) for op in ELEMENTWISE}
    y = {op: run(s, x) for op, s in sess.items()}
    nan, ninf, pinf, lo_cut, hi_cut, lowest, biggest, zero, nzero = range(9)
    for op in ELEMENTWISE:
        assert np.isnan(y[op][nan]), f"{op}(NaN) = {y[op][nan]}"
    e = y["Exp"]
    assert e[ninf] == 0 and e[lo_cut] == 0 and e[lowest] == 0
    assert not np.signbit(e[[ninf, lo_cut, lowest]]).any(), "exp underflow must be +0"
    assert e[pinf] == np.inf and e[biggest] == np.inf
    assert e[hi_cut] == np.inf
    assert abs(float(e[zero]) - 1) <= BOUNDS[("Exp", order)][F32][1] + 2**-11 and e[zero] == e[nzero]
    # 1 within one unit in the last place: the SIMD reciprocals may stop one
    # ulp short (avx2 gives 1 - 2^-24), which the bounds allow anyway.
    assert 1 - np.finfo(dtype).epsneg <= float(y["Sigmoid"][pinf]) <= 1
    assert 0 <= float(y["Sigmoid"][ninf]) < 1e-30
    for op in ("Silu", "Gelu"):  # the limits, not inf * 0
        assert y[op][pinf] == np.inf, f"{op}(+inf) = {y[op][pinf]}"
        assert np.nextafter(info.max, 0) <= y[op][biggest] <= info.max, f"{op}(max) = {y[op][biggest]}"
        for i in (ninf, lowest):
            assert np.isfinite(y[op][i]) and abs(float(y[op][i])) < 1e-30, f"{op}({x[i]}) = {y[op][i]}"


@pytest.mark.parametrize("order", ORDERS)
def test_exp_results_are_zero_normal_or_inf(session_cache, isa, order):
    # e^z is a normal float for -87.336555 < z < 88.72284: no subnormal
    # garbage, and never negative.
    x = np.concatenate([band_samples(F32), np.linspace(-87.4, -86.0, 30001, dtype=F32)])
    y = run(session_cache(make_model("Exp", {"order": order}, ("N",), F32), isa), x)
    y = y[~np.isnan(y)]
    assert not np.signbit(y).any()
    assert ((y == 0) | (y >= np.finfo(F32).tiny)).all()


# ---------------------------------------------------------------------------
# Softmax and LogSoftmax.


def softmax_rows(n, dtype, seed=0):
    """Rows exercising one row length n: plain, max in the last lane, a NaN
    or +inf in the last lane, masked with -inf and float-lowest, fully
    masked, one survivor, constant."""
    rng = np.random.default_rng(seed)
    lowest = np.finfo(dtype).min
    rows = [rng.standard_normal(n) * 4 for _ in range(2)]
    peak = rng.standard_normal(n)
    peak[-1] = 20.0
    rows.append(peak)
    for special in (np.nan, np.inf):
        r = rng.standard_normal(n)
        r[-1] = special
        rows.append(r)
    for mask in (-np.inf, lowest):
        r = rng.standard_normal(n) * 4
        r[rng.random(n) < 0.5] = mask
        r[0] = 1.0
        rows.append(r)
        rows.append(np.full(n, mask))
    survivor = np.full(n, -np.inf)
    survivor[-1] = -3.0
    rows.append(survivor)
    rows.append(np.full(n, 7.5))
    return np.array(rows).astype(dtype)


def check_special_rows(op, x, y):
    """The special-value rules, exactly, row by row (last axis)."""
    for r, (xr, yr) in enumerate(zip(x, y)):
        if np.isnan(xr).any() or (xr == np.inf).any():
            assert np.isnan(yr).all(), f"{op} row {r} with NaN/+inf: {yr}"
        elif (xr == -np.inf).all():
            expected = 0.0 if op == "Softmax" else -np.inf
            assert (yr == expected).all(), f"{op} fully masked row {r}: {yr}"
        else:
            assert not np.isnan(yr).any()
            dead = xr == -np.inf
            assert (yr[dead] == (0.0 if op == "Softmax" else -np.inf)).all()
            if op == "Softmax":
                assert (yr >= 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("op", ROWWISE)
def test_rows_special_values_and_tails(session_cache, isa, op, order, dtype):
    sess = session_cache(make_model(op, {"order": order}, ("R", "N"), dtype), isa)
    for n in range(1, 68):
        x = softmax_rows(n, dtype, seed=n)
        y = check(sess, op, order, dtype, x, what=f"row length {n}")
        check_special_rows(op, x, y)
        if op == "Softmax":
            check_rows_sum_to_one(y, -1, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ORDERS)
def test_logsoftmax_results_are_never_positive(session_cache, isa, order, dtype):
    # A log-probability is at most 0. With the approximate sum of e^(x - max),
    # the max's own result once came out up to +1.7e-3 (order 2) on peaked
    # rows, so exp(y) summed to 1.0017. Every path: one pass (64 x 128), a row
    # cut over the threads (1 x 50257), two passes (4 x 140001, float32).
    for rows, n in ((64, 128), (1, 50257), (4, 140001)):
        x = np.zeros((rows, n))
        x[:, 3] = np.linspace(0, 20, rows)
        x[:, -1] = np.linspace(20, 0, rows)  # a second peak, at the row's end
        x = x.astype(dtype)
        for threads in (1, 2):
            sess = session_cache(make_model("LogSoftmax", {"order": order}, ("R", "N"), dtype), isa, threads)
            y = check(sess, "LogSoftmax", order, dtype, x, what=f"peaked rows {rows}x{n}, {threads} thread(s)")
            assert (y <= 0).all(), f"{rows}x{n}: largest log-probability {y.max()}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("op", ROWWISE)
def test_rows_accuracy(session_cache, isa, op, order, dtype):
    sess = session_cache(make_model(op, {"order": order}, ("R", "N"), dtype), isa)
    for scale in (0.3, 4.0, 30.0):
        x = logits(48, 1000, scale, seed=int(scale * 10), dtype=dtype)
        y = check(sess, op, order, dtype, x, what=f"logits x{scale}")
        if op == "Softmax":
            check_rows_sum_to_one(y, -1, dtype)
    # Two-element rows at the split where the error peaks (about err / 2),
    # and rows spanning every exponent band.
    pairs = np.stack([np.zeros(4001), np.linspace(-3, 3, 4001)], axis=1).astype(dtype)
    check(sess, op, order, dtype, pairs, what="pairs")
    bands = band_samples(dtype, specials=False)
    check(sess, op, order, dtype, bands[: bands.size // 64 * 64].reshape(64, -1), what="bands")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("op", ROWWISE)
def test_vocab_rows(session_cache, isa, op, order, dtype):
    n = 50257
    rng = np.random.default_rng(order)
    x = logits(4, n, 3.0, seed=order, dtype=dtype)
    x[1, rng.random(n) < 0.9] = -np.inf  # a causal/padding style mask
    x[2, rng.random(n) < 0.5] = np.finfo(dtype).min
    x[3] = 0.5  # uniform: every rounding of the row sum has the same sign
    x[0] *= 8
    sess = session_cache(make_model(op, {"order": order}, ("R", "N"), dtype), isa)
    y = check(sess, op, order, dtype, x, what="vocab rows")
    check_special_rows(op, x, y)
    if op == "Softmax":
        check_rows_sum_to_one(y, -1, dtype)


@pytest.mark.parametrize("n", [50257, 128256, 256000])  # GPT-2, Llama 3, Gemma vocabularies
@pytest.mark.parametrize("order", ORDERS)
def test_long_uniform_rows_sum_to_one(session_cache, isa, order, n):
    # Equal logits are the hard case for a float32 running sum: every addend
    # is the same, so its rounding errors do not cancel.
    sess = session_cache(make_model("Softmax", {"order": order}, ("R", "N")), isa)
    y = run(sess, np.zeros((1, n), F32))
    check_rows_sum_to_one(y, -1, F32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2, -3])
@pytest.mark.parametrize("op", ROWWISE)
def test_axes(session_cache, isa, op, axis, dtype):
    # 37 x 41 columns: partial gather tiles on every non-last axis.
    rng = np.random.default_rng(axis + 3)
    x = (rng.standard_normal((3, 37, 41)) * 5).astype(dtype)
    x[0, rng.random((37, 41)) < 0.3] = -np.inf
    x[1, 5, 7] = np.nan
    x[2, :, 3] = -np.inf
    for order in ORDERS:
        sess = session_cache(make_model(op, {"order": order, "axis": axis}, ("A", "B", "C"), dtype), isa)
        y = check(sess, op, order, dtype, x, attrs={"axis": axis}, what=f"axis {axis}")
        moved_x, moved_y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
        check_special_rows(op, moved_x.reshape(-1, x.shape[axis]), moved_y.reshape(-1, x.shape[axis]))
        if op == "Softmax":
            check_rows_sum_to_one(y, axis, dtype)


# ---------------------------------------------------------------------------
# Every op: tails, empty tensors, the twin.


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("op", ELEMENTWISE)
def test_elementwise_tails(session_cache, isa, op, order, dtype):
    # Lengths 1..67 cover every SIMD remainder; special values sit in the
    # last lanes, where a tail path would meet them.
    rng = np.random.default_rng(7)
    pool = np.concatenate([np.linspace(-20, 20, 400), special_values(dtype).astype(np.float64)])
    sess = session_cache(make_model(op, {"order": order}, ("N",), dtype), isa)
    bias_sess = (
        session_cache(make_model(op, {"order": order}, ("R", "N"), dtype, with_bias=True), isa)
        if op == "Gelu"
        else None
    )
    for n in range(1, 68):
        x = rng.choice(pool, n).astype(dtype)
        x[-min(n, 3) :] = rng.choice(special_values(dtype), min(n, 3))
        check(sess, op, order, dtype, x, what=f"length {n}")
        if bias_sess is not None:
            xb = rng.choice(pool, (3, n)).astype(dtype)
            b = rng.standard_normal(n).astype(dtype)
            check(bias_sess, op, order, dtype, xb, b, what=f"bias length {n}")


EMPTY = [(0,), (0, 5), (3, 0), (2, 0, 4)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ELEMENTWISE + ROWWISE)
def test_empty_tensors(session_cache, isa, op, dtype):
    for shape in EMPTY:
        axes = range(-len(shape), len(shape)) if op in ROWWISE else [None]
        for axis in axes:
            attrs = {} if axis is None else {"axis": axis}
            sess = session_cache(make_model(op, attrs, ["d%d" % i for i in range(len(shape))], dtype), isa)
            y = run(sess, np.zeros(shape, dtype))
            assert y.shape == shape and y.dtype == dtype
        if op == "Gelu":
            sess = session_cache(make_model(op, {}, ["d%d" % i for i in range(len(shape))], dtype, with_bias=True), isa)
            y = run(sess, np.zeros(shape, dtype), np.zeros(shape[-1], dtype))
            assert y.shape == shape


TWIN_CASES = [
    ("Exp", {"order": 1}, False),
    ("Sigmoid", {}, False),
    ("Silu", {"alpha": 1.2345678, "order": 3}, False),  # all 9 digits must reach the twin
    ("Gelu", {"approximate": "tanh"}, True),
    ("Gelu", {"order": 1}, False),
    ("Softmax", {"axis": 0}, False),
    ("LogSoftmax", {"axis": 1, "order": 3}, False),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,attrs,with_bias", TWIN_CASES)
def test_library_matches_twin(session_cache, isa, op, attrs, with_bias, dtype):
    model = make_model(op, attrs, ("A", "B"), dtype, with_bias=with_bias)
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((33, 70)) * 6).astype(dtype)
    x[0, :4] = [np.nan, np.inf, -np.inf, 0]
    x[5] = -np.inf
    bias = rng.standard_normal(70).astype(dtype) if with_bias else None
    got = run(session_cache(model, isa), x, bias)
    twin = run(twin_session(model), x, bias)
    assert twin.dtype == dtype and twin.shape == x.shape
    abs_tol, rel_tol = bound(op, attrs.get("order", 2), dtype, attrs.get("alpha", 1.0))
    assert_close(
        got,
        twin,
        dtype,
        abs_tol + ROUNDING[dtype][0],
        rel_tol + ROUNDING[dtype][1],
        x=x,
        what=f"{op} {attrs} library vs twin",
    )
    # Cross-check the twin itself: a different order of the library would
    # still pass above, the reference must not.
    inputs = [x] if bias is None else [x, bias]
    with np.errstate(over="ignore"):
        expected = reference.REFERENCES[op](inputs, attrs).astype(dtype)
    np.testing.assert_array_equal(twin, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_twin_of_a_chain(session_cache, dtype):
    # Types flow through com.quake nodes (which ONNX shape inference cannot
    # see) into a standard node and on to a second com.quake node.
    from onnx import helper

    elem = 1 if dtype is F32 else 10
    nodes = [
        helper.make_node("Sigmoid", ["X"], ["s"], name="sig", domain="com.quake", order=1),
        helper.make_node("Add", ["s", "s"], ["t"], name="add"),
        helper.make_node("Softmax", ["t"], ["Y"], name="soft", domain="com.quake", axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("X", elem, ["A", "B"])],
        [helper.make_tensor_value_info("Y", elem, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.quake", 1)])
    model.ir_version = 8
    x = np.linspace(-6, 6, 60).reshape(6, 10).astype(dtype)
    s = reference.sigmoid(x).astype(dtype)
    expected = reference.softmax((s + s).astype(dtype), axis=0).astype(dtype)
    np.testing.assert_array_equal(run(twin_session(model), x), expected)
    got = run(session_cache(model), x)
    # An input error d moves a softmax output by at most about 2 d; d is
    # twice the sigmoid's error after the Add.
    tol = 4 * BOUNDS[("Sigmoid", 1)][dtype][0] + BOUNDS[("Softmax", 2)][dtype][0] + ROUNDING[dtype][0]
    assert_close(got, expected, dtype, tol, ROUNDING[dtype][1], x=x, what="Sigmoid -> Add -> Softmax")
