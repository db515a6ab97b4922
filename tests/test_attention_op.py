"""com.quake Attention through ONNX Runtime with the library, against the
float64 reference (quake_onnx.reference.attention) on every kernel table this
CPU has: float and float16, orders 1..3, GQA, broadcasting, k_transposed,
causal with and without a past, masks of every kind and broadcast shape,
special values, threads, concurrent runs, empty tensors, and the errors of
bad attributes (at session creation) and bad shapes (at run time)."""

import re
import threading

import numpy as np
import onnxruntime as ort
import pytest
from helpers import ONNX_TYPE, make_session, quake_isa, session_options
from onnx import TensorProto, helper

import quake_onnx._library
from quake_onnx import reference
from quake_onnx.twin import twin_session

F32, F16 = np.float32, np.float16
ORDERS = (1, 2, 3)
NODE = "attn_node"
# max |Y - reference| <= BOUND[order] * max|V| in float32 (ops.md; the C++
# test measures 0.0251 / 0.00167 / 7.5e-5 on two-key rows, the worst case).
BOUND = {1: 3.0e-2, 2: 2.0e-3, 3: 1.0e-4}
LOWEST = float(np.finfo(np.float32).min)


def attention_model(attrs, dtype=F32, ranks=(4, 4, 4), mask_rank=None, static=None):
    """One com.quake Attention node; symbolic dims unless `static` gives the
    shapes of Q, K, V (and M)."""
    elem = ONNX_TYPE[np.dtype(dtype).type]
    names = ["Q", "K", "V"] + (["M"] if mask_rank is not None else [])
    all_ranks = list(ranks) + ([mask_rank] if mask_rank is not None else [])
    inputs = []
    for i, (name, rank) in enumerate(zip(names, all_ranks)):
        shape = list(static[i]) if static else [f"{name}{a}" for a in range(rank)]
        inputs.append(helper.make_tensor_value_info(name, elem, shape))
    node = helper.make_node("Attention", names, ["Y"], name=NODE, domain="com.quake", **attrs)
    graph = helper.make_graph([node], "attention_test", inputs, [helper.make_tensor_value_info("Y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.quake", 1)])
    model.ir_version = 8
    return model


def feeds(q, k, v, m=None):
    f = {"Q": q, "K": k, "V": v}
    if m is not None:
        f["M"] = m
    return f


def run_attention(sess, q, k, v, m=None):
    return sess.run(None, feeds(q, k, v, m))[0]


def tolerance(order, dtype, v, scores_mag=20.0):
    """Absolute bound: the order's weight error times max|V|, the float32
    rounding of the scores (2^-23 |s| max|V|), and for float16 the output's
    rounding (added per element by check())."""
    vmax = float(np.abs(v.astype(np.float64)).max(initial=0.0))
    return (BOUND[order] + 2.0**-23 * scores_mag + 2e-6) * vmax


def check(y, ref, order, dtype, v, scores_mag=20.0, what=""):
    y64 = y.astype(np.float64)
    assert y.dtype == np.dtype(dtype), f"{what}: dtype {y.dtype}"
    assert y.shape == ref.shape, f"{what}: shape {y.shape}, expected {ref.shape}"
    tol = tolerance(order, dtype, v, scores_mag)
    if dtype is F16:
        tol = tol + 2.0**-11 * np.abs(ref) + 2.0**-25
    nan_ref = np.isnan(ref)
    assert (np.isnan(y64) == nan_ref).all(), f"{what}: NaN pattern differs"
    err = np.abs(y64 - ref)[~nan_ref]
    bad = err > (tol[~nan_ref] if np.ndim(tol) else tol)
    assert not bad.any(), f"{what}: max err {err.max():.3g} > tol (order {order}, max|V| {np.abs(v).max():.3g})"


def rand(rng, shape, sigma=1.0, dtype=F32):
    return (rng.standard_normal(shape) * sigma).astype(dtype)


# ---------------------------------------------------------------------------
# Accuracy.

# (B, H, H_kv, Sq, Skv, D, Dv, causal)
SHAPES = [
    (1, 2, 2, 1, 1, 32, 32, 0),
    (2, 4, 4, 7, 63, 64, 64, 0),
    (1, 4, 2, 65, 65, 80, 48, 1),
    (1, 2, 1, 63, 257, 128, 128, 1),  # causal with a past
    (1, 3, 3, 257, 64, 32, 16, 1),  # more queries than keys
    (1, 2, 2, 1, 1500, 64, 64, 0),  # decode: the keys are split
    (2, 8, 2, 1, 700, 64, 64, 1),  # GQA decode: a group's heads become the rows of one task
    (1, 6, 1, 1, 300, 32, 32, 0),  # MQA decode
]


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}Hkv{}Sq{}Skv{}D{}Dv{}c{}".format(*s))
def test_accuracy(session_cache, isa, shape, order, dtype):
    b, h, hkv, sq, skv, d, dv, causal = shape
    rng = np.random.default_rng(sum(shape))
    q, k, v = (
        rand(rng, (b, h, sq, d), 1.5, dtype),
        rand(rng, (b, hkv, skv, d), 1.5, dtype),
        rand(rng, (b, hkv, skv, dv), 2, dtype),
    )
    attrs = {"scale": 1.0 / np.sqrt(d), "causal": causal, "order": order}
    sess = session_cache(attention_model(attrs, dtype), isa)
    y = run_attention(sess, q, k, v)
    ref = reference.attention(q, k, v, None, attrs["scale"], causal)
    check(y, ref, order, dtype, v, what=f"{shape}")


# ---------------------------------------------------------------------------
# precision "bfloat16" (docs/ops.md, "Error of precision bfloat16").

BF16_U = 2.0**-8
# (B, H, H_kv, Sq, Skv, D, Dv, causal, mask): odd lengths and dims, GQA,
# causal with a past, -inf masks with dead rows, decode (split, GQA-folded).
BF16_CASES = [
    (1, 2, 2, 65, 65, 64, 64, 0, None),
    (1, 4, 2, 63, 257, 80, 48, 1, None),
    (2, 4, 4, 33, 70, 64, 64, 0, "-inf"),
    (1, 3, 3, 257, 64, 33, 17, 1, None),
    (2, 8, 2, 1, 700, 64, 64, 1, None),
    (1, 2, 2, 1, 1500, 128, 128, 0, "padding"),
]


def bf16_engine(isa):
    with quake_isa(isa):
        return quake_onnx._library.attention_bf16_engine()


def score_bound_a(q, k, scale):
    """A of the bf16 bound: scale * max over (query, key) of sum_c |q_c k_c|."""
    q64, k64 = np.abs(q.astype(np.float64)), np.abs(k.astype(np.float64))
    k64 = np.repeat(k64, q.shape[-3] // k.shape[-3], axis=-3)
    return abs(scale) * float(np.matmul(q64, np.swapaxes(k64, -1, -2)).max(initial=0.0))


def bf16_mask(kind, b, sq, skv, rng):
    if kind is None:
        return None
    if kind == "padding":
        m = np.zeros((b, 1, 1, skv), F32)
        m[..., skv - skv // 3 :] = -np.inf
        return m
    m = np.where(rng.random((b, 1, sq, skv)) < 0.4, -np.inf, rng.standard_normal((b, 1, sq, skv))).astype(F32)
    m[:, :, ::5, :] = -np.inf  # dead rows
    return m


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("case", BF16_CASES, ids=lambda s: "B{}H{}Hkv{}Sq{}Skv{}D{}Dv{}c{}m{}".format(*s))
def test_bf16_accuracy(session_cache, isa, case, dtype):
    b, h, hkv, sq, skv, d, dv, causal, mask = case
    rng = np.random.default_rng(sq * 1000 + skv)
    q, k, v = (
        rand(rng, (b, h, sq, d), 1.5, dtype),
        rand(rng, (b, hkv, skv, d), 1.5, dtype),
        rand(rng, (b, hkv, skv, dv), 2, dtype),
    )
    m = bf16_mask(mask, b, sq, skv, rng)
    m = None if m is None else m.astype(dtype)
    attrs = {"scale": 1.0 / np.sqrt(d), "causal": causal}
    mask_rank = None if m is None else 4
    y = run_attention(
        session_cache(attention_model({**attrs, "precision": "bfloat16"}, dtype, mask_rank=mask_rank), isa), q, k, v, m
    )
    y32 = run_attention(session_cache(attention_model(attrs, dtype, mask_rank=mask_rank), isa), q, k, v, m)
    # One query row per task (Sq 1 without grouped heads to fold) keeps the float32 products (docs/ops.md).
    rows = sq * (h // hkv) if sq == 1 else sq
    if bf16_engine(isa) == "float32 fallback" or rows < 2:
        np.testing.assert_array_equal(y, y32)  # the float32 kernel, bit for bit
        return
    assert not np.array_equal(y, y32), "precision bfloat16 changed nothing"
    ref = reference.attention(q, k, v, m, attrs["scale"], causal)
    emu = reference.attention(q, k, v, m, attrs["scale"], causal, precision="bfloat16")
    vmax = float(np.abs(v.astype(np.float64)).max())
    a = score_bound_a(q, k, attrs["scale"])
    half = (2.0**-11 * np.abs(ref) + 2.0**-25) if dtype is F16 else 0.0
    # Against the float32 definition: the bound docs/ops.md states.
    dd = (2 * BF16_U + BF16_U**2 + d * 2.0**-24) * a
    loose = (BOUND[2] + 2 * BF16_U + np.expm1(2 * dd) + 2.0**-23 * 20 + 2e-6) * vmax + half
    # Against the emulation: P's rounding (its max and the kernel's running max
    # may differ: u each) and the float32 sums of the products.
    tight = (BOUND[2] + 2 * BF16_U + d * 2.0**-23 * a + 2.0**-23 * 20 + 2e-6) * vmax + half
    y64 = y.astype(np.float64)
    assert (np.isnan(y64) == np.isnan(ref)).all()
    live = ~np.isnan(ref)
    err, err_emu = np.abs(y64 - ref)[live], np.abs(y64 - emu)[live]
    assert (err <= (loose[live] if np.ndim(loose) else loose)).all(), f"vs float32: {err.max():.3g}"
    assert (err_emu <= (tight[live] if np.ndim(tight) else tight)).all(), f"vs emulation: {err_emu.max():.3g}"
    # Typical errors sit far below the worst case (the C++ test prints the maxima).
    assert err.max() <= 0.02 * vmax, f"{err.max():.3g}"


def test_bf16_special_values(session_cache, isa):
    # NaN in Q -> its row NaN; +inf in the mask -> its row NaN; a dead row -> 0.
    rng = np.random.default_rng(5)
    q, k, v = rand(rng, (1, 2, 9, 32)), rand(rng, (1, 2, 40, 32)), rand(rng, (1, 2, 40, 16))
    m = np.zeros((1, 1, 9, 40), F32)
    q[0, 0, 2, 5] = np.nan
    m[0, 0, 4, 7] = np.inf
    m[0, 0, 6, :] = -np.inf
    y = run_attention(
        session_cache(attention_model({"scale": 0.2, "precision": "bfloat16"}, mask_rank=4), isa), q, k, v, m
    )
    assert np.isnan(y[0, 0, 2]).all() and np.isnan(y[:, :, 4]).all()
    assert (y[:, :, 6] == 0).all()
    others = [r for r in range(9) if r not in (2, 4, 6)]
    assert np.isfinite(y[:, :, others]).all() and np.isfinite(y[0, 1, 2]).all()


def test_bf16_reference_rounding():
    x = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-10, np.inf, -np.inf, np.nan, 1e-40, 3.4e38, -0.0], F32)
    r = reference.bfloat16_round(x)
    # ties to even (1 + 2^-8 -> 1, 1 + 3 2^-8 -> 1 + 2^-6), above the tie rounds up
    assert r[0] == 1.0 and r[1] == 1.0 and r[2] == 1 + 2**-6 and r[3] == 1 + 2**-7
    assert r[4] == np.inf and r[5] == -np.inf and np.isnan(r[6]) and r[7] == 0.0 and r[8] == np.inf
    assert np.signbit(r[9])
    assert (r.view(np.uint32)[~np.isnan(r)] & 0xFFFF == 0).all()


@pytest.mark.parametrize("order", ORDERS)
def test_worst_case_pairs(session_cache, isa, order):
    # Two keys whose score gap sweeps every fraction of the exponent, V = +-1:
    # where the weights' error peaks.
    q = np.linspace(-6, 6, 4001, dtype=F32).reshape(1, 1, 4001, 1)
    k = np.array([0, 1], F32).reshape(1, 1, 2, 1)
    v = np.array([1, -1], F32).reshape(1, 1, 2, 1)
    sess = session_cache(attention_model({"scale": 1.0, "order": order}), isa)
    y = run_attention(sess, q, k, v)
    ref = reference.attention(q, k, v, None, 1.0)
    err = np.abs(y - ref).max()
    assert err <= BOUND[order], f"order {order}: {err:.3g}"
    assert err >= BOUND[order] / 3, "the sweep should come near the bound"


@pytest.mark.parametrize("dtype", [F32, F16])
def test_k_transposed_equals_k(session_cache, isa, dtype):
    rng = np.random.default_rng(3)
    q, k, v = (
        rand(rng, (2, 3, 33, 64), 1, dtype),
        rand(rng, (2, 3, 70, 64), 1, dtype),
        rand(rng, (2, 3, 70, 40), 1, dtype),
    )
    plain = session_cache(attention_model({"scale": 0.125}, dtype), isa)
    transposed = session_cache(attention_model({"scale": 0.125, "k_transposed": 1}, dtype), isa)
    y = run_attention(plain, q, k, v)
    yt = run_attention(transposed, q, np.ascontiguousarray(np.swapaxes(k, -1, -2)), v)
    np.testing.assert_allclose(
        yt.astype(np.float64),
        y.astype(np.float64),
        rtol=1e-5 if dtype is F32 else 2e-3,
        atol=1e-6 if dtype is F32 else 1e-3,
    )
    check(yt, reference.attention(q, k, v, None, 0.125), 2, dtype, v, what="k_transposed")


GQA_AND_BROADCAST = [
    # Q, K, V shapes
    ((2, 8, 9, 16), (2, 2, 20, 16), (2, 2, 20, 8)),  # GQA, 4 query heads per kv head
    ((1, 6, 9, 16), (1, 1, 20, 16), (1, 1, 20, 16)),  # MQA
    ((1, 4, 9, 16), (3, 4, 20, 16), (3, 4, 20, 16)),  # Q broadcast over a batch of K/V
    ((4, 9, 16), (4, 20, 16), (4, 20, 16)),  # rank 3: heads only
    ((9, 16), (20, 16), (20, 12)),  # rank 2
    ((2, 1, 4, 9, 16), (1, 3, 2, 20, 16), (1, 3, 2, 20, 16)),  # rank 5, both ways, GQA
]


@pytest.mark.parametrize(
    "shapes", GQA_AND_BROADCAST, ids=lambda s: "x".join(map(str, s[0])) + "-" + "x".join(map(str, s[1]))
)
def test_gqa_and_broadcast(session_cache, isa, shapes):
    rng = np.random.default_rng(len(shapes[0]))
    q, k, v = (rand(rng, s) for s in shapes)
    sess = session_cache(attention_model({"scale": 0.3}, F32, ranks=tuple(len(s) for s in shapes)), isa)
    y = run_attention(sess, q, k, v)
    check(y, reference.attention(q, k, v, None, 0.3), 2, F32, v, what=str(shapes))


def mask_values(kind, shape, rng, dtype=F32):
    """Additive masks as exporters make them (float-lowest of the tensor type)."""
    live = rng.random(shape) < 0.7
    if kind == "-inf":
        return np.where(live, 0, -np.inf).astype(dtype)
    if kind == "lowest":
        return np.where(live, 0, np.finfo(dtype).min).astype(dtype)
    if kind == "-1e4":
        return np.where(live, 0, -1e4).astype(dtype)
    if kind == "bias":  # an additive bias (ALiBi-like), no mask
        return rand(rng, shape, 2.0, dtype)
    raise ValueError(kind)


MASK_SHAPES = [
    (1, 1, 1, 70),
    (2, 1, 1, 70),
    (2, 1, 33, 70),
    (2, 4, 33, 70),
    (33, 70),
    (70,),
    (2, 4, 33, 1),
    (1, 1, 1, 1),
]


@pytest.mark.parametrize("kind", ["-inf", "lowest", "-1e4", "bias"])
@pytest.mark.parametrize("mask_shape", MASK_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [F32, F16])
def test_masks(session_cache, isa, mask_shape, kind, dtype):
    rng = np.random.default_rng(len(mask_shape) + len(kind))
    q, k, v = (
        rand(rng, (2, 4, 33, 32), 1, dtype),
        rand(rng, (2, 4, 70, 32), 1, dtype),
        rand(rng, (2, 4, 70, 24), 1, dtype),
    )
    m = mask_values(kind, mask_shape, rng, dtype)
    sess = session_cache(attention_model({"scale": 0.2}, dtype, mask_rank=len(mask_shape)), isa)
    y = run_attention(sess, q, k, v, m)
    ref = reference.attention(q, k, v, m, 0.2)
    check(y, ref, 2, dtype, v, scores_mag=1e4 if kind == "-1e4" else 20.0, what=f"{kind} {mask_shape}")


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize(
    "mask_shape",
    [None, (2, 1, 1, 500), (2, 8, 1, 500), (500,), (2, 8, 1, 1)],
    ids=lambda s: "none" if s is None else "x".join(map(str, s)),
)
@pytest.mark.parametrize("k_transposed", [0, 1])
def test_gqa_decode(session_cache, isa, mask_shape, k_transposed, dtype):
    # Sq = 1 with 4 query heads per key/value head: the kernel takes each
    # group's heads as the rows of one task (one read of K and V per group).
    rng = np.random.default_rng(7 + k_transposed)
    q, k, v = (
        rand(rng, (2, 8, 1, 64), 1, dtype),
        rand(rng, (2, 2, 500, 64), 1, dtype),
        rand(rng, (2, 2, 500, 48), 1, dtype),
    )
    m = None if mask_shape is None else mask_values("-inf", mask_shape, rng, dtype)
    if m is not None and m.shape[-1] == 1:
        m[:, 3] = -np.inf  # head 3 sees no key: its row is 0
    model = attention_model(
        {"scale": 0.125, "causal": 1, "k_transposed": k_transposed}, dtype, mask_rank=None if m is None else m.ndim
    )
    kk = np.ascontiguousarray(np.swapaxes(k, -1, -2)) if k_transposed else k
    y = run_attention(session_cache(model, isa), q, kk, v, m)
    check(y, reference.attention(q, k, v, m, 0.125, causal=1), 2, dtype, v, what=f"GQA decode mask {mask_shape}")
    if m is not None and m.shape[-1] == 1:
        assert (y[:, 3] == 0).all()


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("order", ORDERS)
def test_mask_special_rows(session_cache, isa, order, dtype):
    # Fully masked rows (-inf: 0; the type's lowest: uniform over the keys,
    # float16's -65504 read as float's lowest, as a float16 graph rounds s -
    # 65504 back to -65504), a row with one live key (that key's V row), a
    # padding mask on whole tiles.
    rng = np.random.default_rng(order)
    sq, skv = 40, 600
    q, k, v = (
        rand(rng, (1, 2, sq, 64), 1, dtype),
        rand(rng, (1, 2, skv, 64), 1, dtype),
        rand(rng, (1, 2, skv, 64), 1, dtype),
    )
    m = np.zeros((1, 2, sq, skv), F32)
    m[..., 300:] = -np.inf  # padding: whole key tiles
    m[:, :, 3] = -np.inf  # fully masked
    m[:, :, 4] = LOWEST if dtype is F32 else -65504.0
    m[:, :, 5] = -np.inf
    m[:, :, 5, 17] = 0.0  # one live key
    m = m.astype(dtype)
    sess = session_cache(attention_model({"scale": 0.125, "order": order}, dtype, mask_rank=4), isa)
    y = run_attention(sess, q, k, v, m)
    assert (y[:, :, 3] == 0).all() and not np.signbit(y[:, :, 3]).any()
    half = 1e-3 if dtype is F16 else 0.0  # Y rounded to float16
    np.testing.assert_allclose(
        y[:, :, 4].astype(F32), v.astype(F32).mean(axis=2), atol=BOUND[order] * np.abs(v).max() + half
    )
    np.testing.assert_allclose(y[:, :, 5], v[:, :, 17], rtol=2e-3 if dtype is F16 else 1e-6, atol=1e-6)
    check(y, reference.attention(q, k, v, m, 0.125), order, dtype, v, what="special rows")


@pytest.mark.parametrize("sq,skv", [(1, 300), (7, 300), (64, 300), (300, 300), (301, 300), (300, 64), (5, 1)])
def test_causal_with_past(session_cache, isa, sq, skv):
    rng = np.random.default_rng(sq + skv)
    q, k, v = rand(rng, (1, 3, sq, 32)), rand(rng, (1, 3, skv, 32)), rand(rng, (1, 3, skv, 32))
    sess = session_cache(attention_model({"scale": 0.2, "causal": 1}), isa)
    y = run_attention(sess, q, k, v)
    ref = reference.attention(q, k, v, None, 0.2, causal=1)
    check(y, ref, 2, F32, v, what=f"causal Sq {sq} Skv {skv}")
    if sq > skv:  # the first Sq - Skv queries see no key
        assert (y[:, :, : sq - skv] == 0).all()
    # causal=1 equals an explicit triangular -inf mask.
    i, j = np.arange(sq)[:, None], np.arange(skv)[None, :]
    tri = np.where(j > i + (skv - sq), -np.inf, 0).astype(F32)
    masked = session_cache(attention_model({"scale": 0.2}, mask_rank=2), isa)
    np.testing.assert_allclose(run_attention(masked, q, k, v, tri), y, rtol=1e-5, atol=1e-6)


def test_special_values(session_cache, isa):
    rng = np.random.default_rng(9)
    q, k, v = rand(rng, (1, 1, 8, 16)), rand(rng, (1, 1, 50, 16)), rand(rng, (1, 1, 50, 16))
    q[0, 0, 2, 5] = np.nan  # its row: NaN
    m = np.zeros((8, 50), F32)
    m[4, 7] = np.inf  # +inf score: NaN row
    m[6, 3] = np.nan
    sess = session_cache(attention_model({"scale": 0.25}, mask_rank=2), isa)
    y = run_attention(sess, q, k, v, m)
    nan_rows = np.isnan(y[0, 0]).all(axis=-1)
    assert list(np.flatnonzero(nan_rows)) == [2, 4, 6]
    assert not np.isnan(y[0, 0, ~nan_rows]).any()
    check(y, reference.attention(q, k, v, m, 0.25), 2, F32, v, what="special values")
    # NaN in V reaches every row (weights are never exactly 0 here).
    v2 = v.copy()
    v2[0, 0, 11, 3] = np.nan
    y2 = run_attention(session_cache(attention_model({"scale": 0.25}), isa), q, k, v2)
    assert np.isnan(y2[0, 0, :, 3]).all() and not np.isnan(np.delete(y2[0, 0], [2], axis=0)[:, [0, 1, 2, 4]]).any()


def test_library_matches_twin(isa):
    rng = np.random.default_rng(4)
    q, k, v = rand(rng, (1, 4, 9, 16)), rand(rng, (1, 2, 30, 16)), rand(rng, (1, 2, 30, 8))
    m = mask_values("-inf", (1, 1, 9, 30), rng)
    model = attention_model({"scale": 0.3, "causal": 1, "order": 3}, mask_rank=4)
    got = run_attention(make_session(model, isa), q, k, v, m)
    twin = run_attention(twin_session(model), q, k, v, m)
    np.testing.assert_array_equal(twin, reference.attention(q, k, v, m, 0.3, causal=1).astype(F32))
    check(got, twin.astype(np.float64), 3, F32, v, what="library vs twin")


# ---------------------------------------------------------------------------
# Threads.


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(1, 12, 300, 300), (1, 2, 1, 5000), (1, 2, 2, 5000), (2, 3, 129, 700)])
@pytest.mark.parametrize("causal", [0, 1])
def test_one_vs_two_threads(session_cache, isa, shape, causal, precision):
    # Tasks (and the decode split) do not depend on the thread count; only the
    # order of float sums could, within the summation bound.
    b, h, sq, skv = shape
    rng = np.random.default_rng(sq)
    q, k, v = rand(rng, (b, h, sq, 64)), rand(rng, (b, h, skv, 64)), rand(rng, (b, h, skv, 64))
    model = attention_model({"scale": 0.125, "causal": causal, "precision": precision})
    y1 = run_attention(session_cache(model, isa, threads=1), q, k, v)
    y2 = run_attention(session_cache(model, isa, threads=2), q, k, v)
    np.testing.assert_allclose(y2, y1, rtol=1e-5, atol=1e-6 * np.abs(v).max())


def test_concurrent_runs_on_one_session(session_cache, isa):
    sess = session_cache(attention_model({"scale": 0.125, "causal": 1}), isa, threads=2)
    rng = np.random.default_rng(11)
    cases = [
        (rand(rng, (1, 4, s, 64)), rand(rng, (1, 4, s + 9, 64)), rand(rng, (1, 4, s + 9, 32)))
        for s in (1, 40, 130, 257)
    ]
    expected = [run_attention(sess, *c) for c in cases]
    failures = []

    def worker(t):
        try:
            for i in range(12):
                n = (t * 3 + i) % len(cases)
                if not np.array_equal(run_attention(sess, *cases[n]), expected[n]):
                    failures.append((t, i, n))
        except Exception as e:  # surfaced below, not lost in the thread
            failures.append((t, repr(e)))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, f"concurrent runs differ from sequential ones: {failures[:5]}"


# ---------------------------------------------------------------------------
# Empty tensors, shapes.


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize(
    "q_shape,kv_len,dv",
    [
        ((0, 2, 5, 8), 7, 8),
        ((1, 2, 0, 8), 7, 8),
        ((1, 2, 5, 8), 0, 8),
        ((1, 2, 5, 0), 7, 8),
        ((1, 2, 5, 8), 7, 0),
        ((1, 0, 5, 8), 7, 8),
    ],
)
def test_empty_tensors(session_cache, isa, q_shape, kv_len, dv, dtype):
    b, h, sq, d = q_shape
    q = np.ones(q_shape, dtype)
    k = np.ones((b, h, kv_len, d), dtype)
    v = np.arange(b * h * kv_len * dv, dtype=np.float64).reshape(b, h, kv_len, dv).astype(dtype) / 10
    y = run_attention(session_cache(attention_model({"scale": 1.0}, dtype), isa), q, k, v)
    ref = reference.attention(q, k, v, None, 1.0)
    assert y.shape == ref.shape == (b, h, sq, dv)
    # D = 0: every score 0, Y the mean of V; Skv = 0: zeros.
    np.testing.assert_allclose(y.astype(np.float64), ref, rtol=1e-3, atol=1e-6)


def test_static_shape_is_inferred():
    so = ort.SessionOptions()
    so.register_custom_ops_library(__import__("quake_onnx").get_library_path())
    model = attention_model({"scale": 0.5}, static=[(2, 8, 5, 16), (2, 2, 7, 16), (2, 2, 7, 12)])
    shape_node = helper.make_node("Shape", ["Y"], ["S"])
    model.graph.node.append(shape_node)
    model.graph.output.append(helper.make_tensor_value_info("S", TensorProto.INT64, None))
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    assert [o.shape for o in sess.get_outputs()][1] == [4]
    rng = np.random.default_rng(0)
    y, s = sess.run(None, feeds(rand(rng, (2, 8, 5, 16)), rand(rng, (2, 2, 7, 16)), rand(rng, (2, 2, 7, 12))))
    assert list(s) == [2, 8, 5, 12] and y.shape == (2, 8, 5, 12)


# ---------------------------------------------------------------------------
# Errors.


def creation_error(model):
    with pytest.raises(Exception) as info:
        make_session(model)
    return str(info.value)


def assert_names(message, *needles):
    for needle in needles:
        assert re.search(re.escape(str(needle)), message, re.IGNORECASE), f"{needle!r} not in: {message}"


BAD_ATTRS = [
    ({}, ["scale", "required"]),
    ({"scale": float("nan")}, ["scale", "nan"]),
    ({"scale": float("inf")}, ["scale", "inf"]),
    ({"scale": 1}, ["scale", "a float"]),
    ({"scale": 1.0, "causal": 2}, ["causal", "got 2"]),
    ({"scale": 1.0, "causal": 1.0}, ["causal", "an int"]),
    ({"scale": 1.0, "k_transposed": -1}, ["k_transposed", "got -1"]),
    ({"scale": 1.0, "order": 4}, ["order", "got 4"]),
    ({"scale": 1.0, "precision": "fp8"}, ["precision", '"float32" or "bfloat16"', '"fp8"']),
    ({"scale": 1.0, "precision": "BFloat16"}, ["precision", '"BFloat16"']),
    ({"scale": 1.0, "precision": 16}, ["precision", "a string"]),
]


@pytest.mark.parametrize("attrs,needles", BAD_ATTRS, ids=[str(a) for a, _ in BAD_ATTRS])
def test_bad_attributes_fail_at_session_creation(attrs, needles):
    message = creation_error(attention_model(attrs))
    assert_names(message, "com.quake Attention", NODE, *needles)


BAD_SHAPES = [
    # Q, K, V, M (None: no mask), words of the message
    ((1, 2, 5, 8), (1, 2, 7, 9), (1, 2, 7, 8), None, ["head dim", "Q [1,2,5,8]", "K [1,2,7,9]"]),
    ((1, 2, 5, 8), (1, 2, 7, 8), (1, 2, 6, 8), None, ["Skv", "V [1,2,6,8]"]),
    ((1, 6, 5, 8), (1, 4, 7, 8), (1, 4, 7, 8), None, ["divide", "K [1,4,7,8]"]),
    ((3, 2, 5, 8), (2, 2, 7, 8), (2, 2, 7, 8), None, ["broadcast", "Q [3,2,5,8]"]),
    ((1, 2, 5, 8), (1, 2, 7, 8), (1, 2, 7, 8), (1, 1, 5, 6), ["M [1,1,5,6]", "[..., 5, 7]"]),
    ((1, 2, 5, 8), (1, 2, 7, 8), (1, 2, 7, 8), (1, 3, 5, 7), ["M [1,3,5,7]"]),
]


@pytest.mark.parametrize("q,k,v,m,needles", BAD_SHAPES, ids=[str(i) for i in range(len(BAD_SHAPES))])
def test_bad_shapes_fail_at_run_time(q, k, v, m, needles):
    model = attention_model({"scale": 1.0}, ranks=(len(q), len(k), len(v)), mask_rank=None if m is None else len(m))
    sess = make_session(model)
    with pytest.raises(Exception) as info:
        run_attention(sess, np.ones(q, F32), np.ones(k, F32), np.ones(v, F32), None if m is None else np.zeros(m, F32))
    assert_names(str(info.value), "com.quake Attention", NODE, *needles)


def test_double_inputs_refused_at_creation():
    message = creation_error(attention_model({"scale": 1.0}, np.float64))
    assert_names(message, NODE)


def test_valid_attribute_combinations_are_accepted():
    rng = np.random.default_rng(1)
    q, k, v = rand(rng, (1, 2, 5, 8)), rand(rng, (1, 2, 7, 8)), rand(rng, (1, 2, 7, 8))
    for causal in (0, 1):
        for order in ORDERS:
            for extra in ({}, {"precision": "float32"}, {"precision": "bfloat16"}, {"scale": -0.5}, {"scale": 0.0}):
                attrs = {"scale": 0.5, "causal": causal, "order": order, **extra}
                y = run_attention(
                    ort.InferenceSession(
                        attention_model(attrs).SerializeToString(),
                        session_options(),
                        providers=["CPUExecutionProvider"],
                    ),
                    q,
                    k,
                    v,
                )
                assert y.shape == (1, 2, 5, 8) and np.isfinite(y).all()
