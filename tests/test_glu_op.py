"""com.quake Glu (act(A) * B, or act(first half) * second half of A's last
axis) against the float64 reference, on every kernel table this CPU has,
every order, activation, float and float16, both forms; special values,
threads, in place, shape inference and errors."""

import numpy as np
import onnx
import pytest
from helpers import ONNX_TYPE, band_samples, make_session, special_values
from onnx import TensorProto, helper

from quake_onnx import reference
from quake_onnx.schemas import register_schemas
from quake_onnx.twin import twin_session

F32, F16 = np.float32, np.float16
ORDERS = (1, 2, 3)
DTYPES = (F32, F16)
ACTIVATIONS = ("silu", "gelu", "gelu_tanh")
NODE = "quake_Glu"

# The gate act(a) keeps the absolute error of com.quake Silu / Gelu (the same
# kernels' arithmetic; tests/test_accuracy.py, BOUNDS, float32 rows), so an
# element of y = act(a) * b is within GATE_ABS * |b| (silu: times
# max(1, 1/alpha)) of the reference, plus the rounding of y: float32 two
# roundings (the gate's and the product's), float16 also the output's to half
# (2^-11 relative, 2^-25 absolute for half subnormals). Measured maxima of
# |y - ref| / |b| are those of Silu / Gelu (custom_ops/tests/test_kernels.cc
# prints them per table).
GATE_ABS = {
    ("silu", 1): 7.2e-3,
    ("silu", 2): 4.2e-4,
    ("silu", 3): 1.8e-5,
    ("gelu", 1): 4.4e-3,
    ("gelu", 2): 2.6e-4,
    ("gelu", 3): 1.2e-5,
}
ROUNDING = {F32: (0.0, 2.4e-7), F16: (2**-25, 2**-11 + 2.4e-7)}
# Against the erf form, "gelu" also carries the tanh form's own gap (ops.md).
GELU_ERF_GAP = 4.8e-4


def gate_bound(activation, order, alpha=1.0):
    kind = "silu" if activation == "silu" else "gelu"
    return GATE_ABS[(kind, order)] * (max(1.0, 1.0 / alpha) if kind == "silu" else 1.0)


def glu_model(attrs, shape=("R", "C"), dtype=F32, with_b=True, b_shape=None, out_shape=None):
    elem = ONNX_TYPE[np.dtype(dtype).type]
    inputs = [helper.make_tensor_value_info("A", elem, None if shape is None else list(shape))]
    if with_b:
        inputs.append(helper.make_tensor_value_info("B", elem, list(b_shape or shape)))
    node = helper.make_node("Glu", [i.name for i in inputs], ["Y"], name=NODE, domain="com.quake", **attrs)
    graph = helper.make_graph([node], "glu_test", inputs, [helper.make_tensor_value_info("Y", elem, out_shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.quake", 1)])
    model.ir_version = 8
    return model


def run(sess, a, b=None):
    return sess.run(None, {"A": a} if b is None else {"A": a, "B": b})[0]


def halves(a):
    h = a.shape[-1] // 2
    return a[..., :h], a[..., h:]


def assert_glu_close(y, a, b, activation, order, dtype, alpha=1.0, gelu_form="tanh", what=""):
    """Every element within gate_bound * |b| + rounding of the reference (b
    None: the halves form); NaN where the reference is NaN; infinities exact."""
    ref = reference.glu(a, b, activation, alpha, gelu_form)
    bb = np.abs(halves(a)[1] if b is None else b).astype(np.float64)
    gate = gate_bound(activation, order, alpha) + (GELU_ERF_GAP if gelu_form == "none" else 0.0)
    abs_r, rel_r = ROUNDING[dtype]
    assert y.dtype == np.dtype(dtype) and y.shape == ref.shape, (y.dtype, y.shape, ref.shape)
    g = y.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        tol = gate * bb + rel_r * np.abs(ref) + abs_r
        ok = np.abs(g - ref) <= tol
        ok |= np.isnan(g) & np.isnan(ref)
        ok |= np.isinf(ref) & (g == ref)
        edge = (ref + np.sign(g) * tol).astype(dtype).astype(np.float64)  # a value within tol that rounds to inf
        ok |= np.isinf(g) & np.isfinite(ref) & (edge == g)
    if not ok.all():
        bad = np.flatnonzero(~ok.ravel())
        ga, gb = halves(a) if b is None else (a, b)
        lines = [f"Glu {activation} order {order} {np.dtype(dtype).name} {what}: {bad.size} of {ok.size} off"]
        for i in bad[:8]:
            idx = np.unravel_index(i, ok.shape)
            lines.append(f"  a={ga[idx]!r} b={gb[idx]!r}: expected {ref[idx]!r} got {g[idx]!r}")
        raise AssertionError("\n".join(lines))


def gate_inputs(dtype):
    """a over every exponent band and the busy range; b ~ N(0, 2) (finite:
    infinite b is tested with the special values)."""
    a = np.concatenate(
        [band_samples(dtype, per_band=8, specials=False), np.linspace(-20, 20, 20001), np.linspace(-90, 90, 3001)]
    ).astype(dtype)
    b = (np.random.default_rng(3).standard_normal(a.size) * 2).astype(dtype)
    return a, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_accuracy_with_b(session_cache, isa, activation, order, dtype):
    a, b = gate_inputs(dtype)
    y = run(session_cache(glu_model({"activation": activation, "order": order}, ("N",), dtype), isa), a, b)
    assert_glu_close(y, a, b, activation, order, dtype, what="with B")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_accuracy_halves(session_cache, isa, activation, order, dtype):
    a, b = gate_inputs(dtype)
    n = a.size // 64 * 64
    a2 = np.concatenate([a[:n].reshape(-1, 32), b[:n].reshape(-1, 32)], axis=1)  # rows: [gate 32 | up 32]
    y = run(
        session_cache(glu_model({"activation": activation, "order": order}, ("R", "C"), dtype, with_b=False), isa), a2
    )
    assert y.shape == (a2.shape[0], 32)
    assert_glu_close(y, a2, None, activation, order, dtype, what="halves")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [1.702, 0.25, 3.0])
def test_silu_alpha(session_cache, isa, alpha, dtype):
    a, b = gate_inputs(dtype)
    attrs = {"activation": "silu", "alpha": alpha}
    y = run(session_cache(glu_model(attrs, ("N",), dtype), isa), a, b)
    assert_glu_close(y, a, b, "silu", 2, dtype, alpha=float(np.float32(alpha)), what=f"alpha {alpha}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_is_the_tanh_form_for_both_names(session_cache, isa, dtype):
    # "gelu" (what an erf-GELU graph computed) and "gelu_tanh" give the same
    # bits; against the erf form the tanh form's own gap adds, times |b|.
    a, b = gate_inputs(dtype)
    ys = [run(session_cache(glu_model({"activation": act}, ("N",), dtype), isa), a, b) for act in ("gelu", "gelu_tanh")]
    np.testing.assert_array_equal(ys[0], ys[1])
    assert_glu_close(ys[0], a, b, "gelu", 2, dtype, gelu_form="none", what="vs the erf form")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_tails_both_forms(session_cache, isa, activation, order, dtype):
    # Lengths 1..67 (every SIMD remainder) with special values in the last lanes.
    rng = np.random.default_rng(11)
    pool = np.concatenate([np.linspace(-20, 20, 400), special_values(dtype).astype(np.float64)])
    attrs = {"activation": activation, "order": order}
    with_b = session_cache(glu_model(attrs, ("N",), dtype), isa)
    halves_sess = session_cache(glu_model(attrs, ("R", "C"), dtype, with_b=False), isa)
    for n in range(1, 68):
        a = rng.choice(pool, n).astype(dtype)
        a[-min(n, 3) :] = rng.choice(special_values(dtype), min(n, 3))
        b = rng.standard_normal(n).astype(dtype)
        assert_glu_close(run(with_b, a, b), a, b, activation, order, dtype, what=f"length {n}")
        a2 = np.concatenate([rng.choice(pool, (3, n)), rng.standard_normal((3, n))], axis=1).astype(dtype)
        assert_glu_close(run(halves_sess, a2), a2, None, activation, order, dtype, what=f"halves of {n}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_special_values(session_cache, isa, activation, order, dtype):
    info = np.finfo(dtype)
    a_vals = np.array([np.nan, np.inf, -np.inf, 0.0, info.min, info.max, 1.0, -1.0, -8.0], dtype)
    b_vals = np.array([np.nan, np.inf, -np.inf, 0.0, 2.0, -2.0], dtype)
    a, b = (m.ravel() for m in np.meshgrid(a_vals, b_vals, indexing="ij"))
    y = run(session_cache(glu_model({"activation": activation, "order": order}, ("N",), dtype), isa), a, b)
    for ai, bi, yi in zip(a, b, y):
        what = f"Glu {activation}({ai}, {bi}) = {yi}"
        if np.isnan(ai) or np.isnan(bi):
            assert np.isnan(yi), what
        elif ai == np.inf:
            assert np.isnan(yi) if bi == 0 else yi == np.inf * bi, what  # inf * 0 is NaN
        elif ai == 0:
            assert np.isnan(yi) if np.isinf(bi) else yi == 0, what
        elif ai == -np.inf or ai == info.min:
            # The gate's tiny limit (not 0): ~-0 times finite b, an infinity
            # times infinite b (exact math: NaN at a = -inf, -inf * sign(b) below).
            if np.isinf(bi):
                assert yi == -bi, what
            else:
                assert np.isfinite(yi) and abs(float(yi)) < 1e-30, what
        elif ai == info.max:  # act(max) = max exactly, so y = max * b (overflowing to an infinity)
            with np.errstate(over="ignore"):
                assert yi == np.array(float(ai) * float(bi)).astype(dtype), what
        else:
            ref = reference.glu(np.array([ai]), np.array([bi]), activation)[0]
            if np.isinf(ref):  # a finite gate times an infinite b
                assert yi == ref, what
            else:
                assert abs(float(yi) - ref) <= 2e-2 * abs(float(bi)) + 1e-3, what


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_threads(session_cache, isa, threads, dtype):
    # Tensors of several tasks (16384 elements each) with ragged ends; the
    # results do not depend on the thread count.
    rng = np.random.default_rng(threads)
    a = (rng.standard_normal((37, 2000)) * 3).astype(dtype)
    b = rng.standard_normal((37, 2000)).astype(dtype)
    a2 = (rng.standard_normal((29, 2 * 1031)) * 3).astype(dtype)
    got = {}
    for t in (1, threads):
        got[t] = (
            run(session_cache(glu_model({"activation": "silu"}, ("R", "C"), dtype), isa, t), a, b),
            run(session_cache(glu_model({"activation": "gelu"}, ("R", "C"), dtype, with_b=False), isa, t), a2),
        )
    assert_glu_close(got[threads][0], a, b, "silu", 2, dtype, what=f"{threads} threads")
    assert_glu_close(got[threads][1], a2, None, "gelu", 2, dtype, what=f"halves, {threads} threads")
    for x, y in zip(got[1], got[threads]):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_tensors(session_cache, isa, dtype):
    paired = session_cache(glu_model({"activation": "silu"}, ("R", "C"), dtype), isa)
    split = session_cache(glu_model({"activation": "silu"}, ("R", "C"), dtype, with_b=False), isa)
    for shape in [(0, 6), (3, 0), (0, 0)]:  # the halves form wants an even last dimension, empty or not
        z = np.zeros(shape, dtype)
        assert run(paired, z, z).shape == shape
        assert run(split, z).shape == (shape[0], shape[1] // 2)


def _producer_model(with_b, dtype=F32):
    """A and B computed (Neg(Neg(x))) and read only by Glu, with static shapes:
    ORT may then hand Glu one of their buffers as Y (never in the halves form,
    where Y is half of A)."""
    elem = ONNX_TYPE[np.dtype(dtype).type]
    shape = [48, 1024]
    nodes = [
        helper.make_node("Neg", ["X"], ["nx"]),
        helper.make_node("Neg", ["nx"], ["A"]),
        helper.make_node("Neg", ["U"], ["nu"]),
        helper.make_node("Neg", ["nu"], ["B"]),
    ]
    glu_inputs = ["A", "B"] if with_b else ["A"]
    nodes.append(helper.make_node("Glu", glu_inputs, ["Y"], domain="com.quake", activation="silu"))
    inputs = [helper.make_tensor_value_info(n, elem, shape) for n in ("X", "U")]
    out = shape if with_b else [48, 512]
    graph = helper.make_graph(nodes, "inplace", inputs, [helper.make_tensor_value_info("Y", elem, out)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.quake", 1)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("with_b", [True, False])
def test_results_with_buffer_reuse(isa, threads, with_b):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((48, 1024)) * 3).astype(F32)
    u = rng.standard_normal((48, 1024)).astype(F32)
    y = make_session(_producer_model(with_b), isa, threads).run(None, {"X": x, "U": u})[0]
    assert_glu_close(y, x, u if with_b else None, "silu", 2, F32, what="computed inputs")


TWIN_CASES = [
    ({"activation": "silu", "alpha": 1.2345678, "order": 3}, True),
    ({"activation": "gelu", "order": 1}, True),
    ({"activation": "gelu_tanh"}, False),
    ({"activation": "silu"}, False),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("attrs,with_b", TWIN_CASES)
def test_library_matches_twin(session_cache, isa, attrs, with_b, dtype):
    model = glu_model(attrs, ("R", "C"), dtype, with_b=with_b)
    rng = np.random.default_rng(5)
    a = (rng.standard_normal((33, 70)) * 6).astype(dtype)
    a[0, :4] = [np.nan, np.inf, -np.inf, 0]
    b = rng.standard_normal((33, 70)).astype(dtype) if with_b else None
    got = run(session_cache(model, isa), a, b)
    twin = run(twin_session(model), a, b)
    assert twin.dtype == dtype and twin.shape == got.shape
    alpha = float(np.float32(attrs.get("alpha", 1.0)))
    expected = reference.glu(a, b, attrs["activation"], alpha).astype(dtype)
    np.testing.assert_array_equal(twin, expected)
    assert_glu_close(got, a, b, attrs["activation"], attrs.get("order", 2), dtype, alpha=alpha, what="vs twin")


@pytest.mark.parametrize(
    "attrs,message",
    [
        ({}, 'attribute \'activation\' must be "silu", "gelu" or "gelu_tanh", got none'),
        ({"activation": "relu"}, 'got "relu"'),
        ({"activation": 3}, "attribute 'activation' must be a string"),
        ({"activation": "gelu", "alpha": 2.0}, 'alpha applies to activation "silu" only, not "gelu"'),
        ({"activation": "silu", "alpha": 0.0}, "alpha must be a positive finite float"),
        ({"activation": "silu", "alpha": float("inf")}, "alpha must be a positive finite float"),
        ({"activation": "silu", "order": 4}, "order must be 1, 2 or 3, got 4"),
    ],
)
def test_attribute_errors_name_the_node(attrs, message):
    with pytest.raises(Exception) as e:
        make_session(glu_model(attrs))
    assert f"com.quake Glu node '{NODE}'" in str(e.value) and message in str(e.value), str(e.value)


def test_shape_errors_at_run_time():
    sess = make_session(glu_model({"activation": "silu"}, ("R", "C")))
    a = np.zeros((4, 8), F32)
    with pytest.raises(Exception, match=r"B must have A's shape; A is \[4,8\], B is \[4,1\]"):
        run(sess, a, np.zeros((4, 1), F32))
    split = make_session(glu_model({"activation": "silu"}, None, with_b=False))
    with pytest.raises(Exception, match=r"without B, A's last dimension must be even .*A is \[4,7\]"):
        run(split, np.zeros((4, 7), F32))
    with pytest.raises(Exception, match=r"A is \[\]"):
        run(split, np.zeros((), F32))


@pytest.mark.parametrize("elem", [TensorProto.FLOAT, TensorProto.FLOAT16])
def test_static_shapes_are_inferred(elem):
    dtype = F32 if elem == TensorProto.FLOAT else F16
    # ORT (the library's InferShape) and onnx (schemas.py) agree.
    for with_b, want in [(True, [6, 10]), (False, [6, 5])]:
        model = glu_model({"activation": "silu"}, (6, 10), dtype, with_b=with_b)
        assert make_session(model).get_outputs()[0].shape == want
        register_schemas()
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        dims = inferred.graph.output[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in dims] == want
        assert inferred.graph.output[0].type.tensor_type.elem_type == elem
    # A symbolic or odd last dimension is left unknown by onnx (a fresh
    # symbol, never A's: the run names an odd one).
    for shape in [("R", "C"), (6, 7)]:
        model = glu_model({"activation": "gelu"}, shape, dtype, with_b=False)
        dims = onnx.shape_inference.infer_shapes(model).graph.output[0].type.tensor_type.shape.dim
        assert not dims[-1].HasField("dim_value") and dims[-1].dim_param != "C"
        if shape[0] == "R":
            assert dims[0].dim_param == "R"


def test_checker_accepts_both_forms():
    register_schemas()
    for with_b in (True, False):
        model = glu_model(
            {"activation": "gelu_tanh", "order": 1}, (2, 8), with_b=with_b, out_shape=[2, 8 if with_b else 4]
        )
        onnx.checker.check_model(model, full_check=True)
