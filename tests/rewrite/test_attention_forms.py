"""The attention rule on every form it matches: exact node types after the pass,
the full onnx check, idempotence, and outputs through ONNX Runtime within the
op's bound (2e-3 x max|V| at order 2), float32 and float16."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from .attention_forms import block, bound
from .builders import F16, F32, NP, check_rewrite, decision

ATTENTION = "com.quake.Attention"


def attrs(model) -> dict:
    node = next(n for n in model.graph.node if n.op_type == "Attention")
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def fused(model, feeds, expected, dtype=F32, order=2):
    out, report = check_rewrite(model, expected, feeds, atol=bound(feeds, dtype, order), order=order)
    assert decision(report, "attention").replaced
    return out, attrs(out)


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("scale", ["div", "mul", "q", "split", "none"])
def test_scale_forms(scale, dtype):
    model, feeds = block(dtype, scale=scale)
    out, a = fused(model, feeds, [ATTENTION], dtype)
    assert a["scale"] == pytest.approx(1.0 if scale == "none" else 1 / np.sqrt(8), rel=1e-6 if dtype == F32 else 1e-3)
    assert a["k_transposed"] == 0 and a["causal"] == 0  # K read as it was before its Transpose
    assert [i for i in out.graph.node[0].input] == ["Q", "K", "V"]


@pytest.mark.parametrize("dtype", [F32, F16])
def test_k_already_transposed(dtype):
    model, feeds = block(dtype, k_form="pre")
    _, a = fused(model, feeds, [ATTENTION], dtype)
    assert a["k_transposed"] == 1


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("mask_value", [None, -np.inf, -1e4])
def test_where_causal_mask_becomes_causal(dtype, mask_value):
    # GPT-2: a stored lower-triangular bool mask, Sliced to [.., Sq, Skv], in a Where.
    fill = mask_value if mask_value is not None else (-65504.0 if dtype == F16 else None)
    model, feeds = block(dtype, mask="causal_where", mask_value=fill)
    out, a = fused(model, feeds, [ATTENTION], dtype)
    assert a["causal"] == 1 and len(out.graph.node[0].input) == 3
    assert not out.graph.initializer or all(t.name != "bias" for t in out.graph.initializer)  # the mask is gone


@pytest.mark.parametrize("dtype", [F32, F16])
def test_additive_triangular_bias_becomes_causal(dtype):
    # Llama: a constant 0 / -inf bias above the diagonal.
    model, feeds = block(dtype, mask="causal_add")
    _, a = fused(model, feeds, [ATTENTION], dtype)
    assert a["causal"] == 1


def test_additive_causal_bias_with_lowest_becomes_causal():
    model, feeds = block(mask="causal_add", mask_value=float(np.finfo(np.float32).min))
    assert fused(model, feeds, [ATTENTION])[1]["causal"] == 1


@pytest.mark.parametrize("fill", [float(np.finfo(np.float32).min), -1e4])
def test_a_causal_triangle_over_more_queries_than_keys_stays_a_mask(fill):
    # Sq 8 > Skv 4: the first 4 query rows see no key. With a finite fill the
    # original gives them the mean of V (float-lowest) or the softmax of the raw
    # scores (-1e4); causal=1 would give 0, the mask kept as M gives what the original does.
    model, feeds = block(b=1, h=2, sq=8, skv=4, mask="causal_add", mask_value=fill)
    out, a = fused(model, feeds, [ATTENTION])
    assert a["causal"] == 0 and len(out.graph.node[0].input) == 4


@pytest.mark.parametrize("dtype", [F32, F16])
def test_kv_cache_with_causal_mask(dtype):
    # Decoder with a past: K/V = Concat(past, new), Sq < Skv, the triangle shifted by the past.
    model, feeds = block(dtype, sq=4, skv=20, past=16, mask="causal_where")
    out, a = fused(model, feeds, ["Concat", "Concat", ATTENTION], dtype)
    assert a["causal"] == 1
    assert list(out.graph.node[2].input) == ["Q", "cache_k_out", "cache_v_out"]


def test_decode_row_against_the_past_needs_no_mask():
    # Sq = 1: the causal triangle's one row sees every key, so the mask goes entirely.
    model, feeds = block(sq=1, skv=17, past=16, mask="causal_where")
    _, a = fused(model, feeds, ["Concat", "Concat", ATTENTION])
    assert a["causal"] == 0


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("mask", ["add", "sub", "sdpa_bool"])
def test_additive_masks_are_the_mask_input(mask, dtype):
    model, feeds = block(dtype, mask=mask)
    expected = {"add": [ATTENTION], "sub": ["Neg", ATTENTION], "sdpa_bool": ["Where", ATTENTION]}[mask]
    out, a = fused(model, feeds, expected, dtype)
    assert len(out.graph.node[-1].input) == 4 and a["causal"] == 0


@pytest.mark.parametrize("dtype", [F32, F16])
def test_runtime_where_mask_becomes_additive(dtype):
    model, feeds = block(dtype, mask="where")
    out, _ = fused(model, feeds, ["Where", ATTENTION], dtype)
    where = out.graph.node[0]
    assert where.input[0] == "C"  # Where(C, 0, lowest): the kept scores get 0


@pytest.mark.parametrize(
    "dtype, fill", [(F32, -1e4), (F32, -1e9), (F32, "lowest"), (F16, -1e4), (F16, "lowest"), (F32, -np.inf)]
)
def test_where_fill_keeps_fully_masked_rows(dtype, fill):
    """A Where's fill replaces the scores: a row whose every key is masked is
    uniform, the mean of V. M = Where(C, 0, fill) added to them gave a
    softmax of the raw scores for finite fills (0.5 off); the fill becomes the
    lowest of M's type. -inf rows: 0 in the op (NaN in the original)."""
    np_t = NP[dtype]
    value = float(np.finfo(np_t).min) if fill == "lowest" else fill
    model, feeds = block(dtype, mask="where", mask_value=value)
    if not np.isneginf(value):  # a row of -inf is NaN in the original, 0 in the op (docs/ops.md)
        feeds["C"][0, 0, 3] = False  # query row 3 of batch 0 sees no key
    out, _ = fused(model, feeds, ["Where", ATTENTION], dtype)
    where = next(n for n in out.graph.node if n.op_type == "Where")
    fill_init = next(i for i in out.graph.initializer if i.name == where.input[2])
    assert fill_init.data_type == dtype
    want = value if np.isneginf(value) else float(np.finfo(np_t).min)
    assert float(np.frombuffer(fill_init.raw_data, np_t)[0]) == want


@pytest.mark.parametrize("case", ["two Wheres", "Where over an Add"])
def test_a_key_masked_twice_stays_masked_once(case):
    """Each finite Where fill as an added lowest made lowest + lowest (or + an
    additive finfo.min) = -inf: a row masked everywhere gave 0, or the mean of
    V over only some keys (review). The Wheres now apply over what came
    before, as in the graph."""
    from .builders import Graph

    g = Graph(F32)
    s = g.node("Mul", [g.node("MatMul", ["Q", g.node("Transpose", ["K"], perm=[0, 1, 3, 2])]), g.const(0.25)])
    shapes = {"Q": [1, 1, 8, 8], "K": [1, 1, 16, 8], "V": [1, 1, 16, 8]}
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal(sh).astype(np.float32) for n, sh in shapes.items()}
    live = np.ones((1, 1, 8, 16), bool)
    live[..., 3, :] = False
    if case == "two Wheres":
        s = g.node("Where", ["C2", g.node("Where", ["C1", s, g.const(-1e4)]), g.const(-1e4)])
        extra = {"C1": ([1, 1, 8, 16], helper.TensorProto.BOOL), "C2": ([1, 1, 8, 16], helper.TensorProto.BOOL)}
        feeds.update(C1=live, C2=live.copy())
        expected = ["Where", "Where", ATTENTION]
    else:
        s = g.node("Where", ["C", g.node("Add", [s, "M"]), g.const(-1e4)])
        extra = {"C": ([1, 1, 8, 16], helper.TensorProto.BOOL), "M": [1, 1, 8, 16]}
        m = np.zeros((1, 1, 8, 16), np.float32)
        m[..., 3, :8] = np.finfo(np.float32).min
        feeds.update(C=live, M=m)
        expected = ["Where", ATTENTION]
    y = g.node("MatMul", [g.node("Softmax", [s], axis=-1), "V"])
    model = g.model({**shapes, **extra}, {y: [1, 1, 8, 8]}, opset=17)
    out, report = check_rewrite(model, expected, feeds, atol=bound(feeds))
    assert decision(report, "attention").replaced


@pytest.mark.parametrize("opset", [9, 10, 17])
def test_the_float16_saturation_uses_ops_of_the_models_opset(opset):
    """Clip with bound inputs (opset 11) and IsInf (opset 10) made a float16
    model of opset 9-10 fail to load after the rewrite (review)."""
    from .builders import Graph

    g = Graph(F16)
    s = g.node(
        "Cast", [g.node("MatMul", ["Q", g.node("Transpose", ["K"], perm=[0, 1, 3, 2])])], to=helper.TensorProto.FLOAT
    )
    s = g.node("Add", [s, "M"])
    y = g.node("MatMul", [g.node("Cast", [g.node("Softmax", [s], axis=-1)], to=helper.TensorProto.FLOAT16), "V"])
    shapes = {"Q": [1, 2, 8, 8], "K": [1, 2, 16, 8], "V": [1, 2, 16, 8]}
    model = g.model({**shapes, "M": ([1, 1, 8, 16], helper.TensorProto.FLOAT)}, {y: [1, 2, 8, 8]}, opset=opset)
    rng = np.random.default_rng(1)
    feeds = {n: rng.standard_normal(sh).astype(np.float16) for n, sh in shapes.items()}
    m = np.where(rng.random((1, 1, 8, 16)) < 0.7, 0, np.finfo(np.float32).min).astype(np.float32)
    m[..., 0, :] = np.finfo(np.float32).min  # a row masked everywhere: the mean of V
    m[..., 1:, 0] = 0
    feeds["M"] = m
    ops = ["Min", "Max", "Less", "Where", "Cast", ATTENTION]
    out, report = check_rewrite(model, ops, feeds, atol=bound(feeds, F16))
    assert decision(report, "attention").replaced


@pytest.mark.parametrize("kind", ["where", "add"])
def test_float32_mask_of_a_float16_block_saturates(kind):
    """Float16 Q·Kᵀ cast up, masked in float (Where fill -1e9, or an additive
    float-lowest M), Softmax, cast down: M cast to float16 became -inf, and a
    fully masked row 0 instead of the mean of V. It is clipped to float16's
    range first (-inf kept)."""
    from .builders import Graph

    g = Graph(F16)
    s = g.node("MatMul", ["Q", g.node("Transpose", ["K"], perm=[0, 1, 3, 2])])
    s = g.node("Cast", [g.node("Mul", [s, g.const(0.25)])], to=helper.TensorProto.FLOAT)
    rng = np.random.default_rng(3)
    if kind == "where":
        s = g.node("Where", ["C", s, g.const(np.float32(-1e9), dtype=np.float32)])
        mask = rng.random((1, 1, 8, 16)) < 0.7
        mask[..., 0, :] = False
        mask[..., 1:, 0] = True
        inputs = {"C": ([1, 1, 8, 16], helper.TensorProto.BOOL)}
    else:
        s = g.node("Add", [s, "M"])
        mask = np.where(rng.random((1, 1, 8, 16)) < 0.7, 0, np.finfo(np.float32).min).astype(np.float32)
        mask[..., 0, :] = np.finfo(np.float32).min
        mask[..., 1, 5:9] = -np.inf  # kept -inf (a row of them: NaN in the original, 0 in the op)
        mask[..., 1:, 0] = 0
        inputs = {"M": ([1, 1, 8, 16], helper.TensorProto.FLOAT)}
    p = g.node("Cast", [g.node("Softmax", [s], axis=-1)], to=helper.TensorProto.FLOAT16)
    y = g.node("MatMul", [p, "V"])
    model = g.model({"Q": [1, 2, 8, 8], "K": [1, 2, 16, 8], "V": [1, 2, 16, 8], **inputs}, {y: [1, 2, 8, 8]}, opset=17)
    feeds = {n: rng.standard_normal(sh).astype(np.float16) for n, sh in (("Q", (1, 2, 8, 8)), ("K", (1, 2, 16, 8)))}
    feeds["V"] = rng.standard_normal((1, 2, 16, 8)).astype(np.float16)
    feeds["C" if kind == "where" else "M"] = mask
    expected = ["Where", "Min", "Max", "Less", "Where", "Cast", ATTENTION] if kind == "where" else []
    expected = expected or ["Min", "Max", "Less", "Where", "Cast", ATTENTION]
    out, report = check_rewrite(model, expected, feeds, atol=bound(feeds, F16))
    assert decision(report, "attention").replaced


def test_causal_where_and_padding_add():
    model, feeds = block(mask="causal_where+add")
    out, a = fused(model, feeds, [ATTENTION])
    assert a["causal"] == 1 and out.graph.node[0].input[3] == "M"


def test_float16_softmax_in_float32():
    # Cast(float16 -> float) -> Softmax -> Cast(float -> float16), the padding mask added in float.
    model, feeds = block(F16, mask="causal_add", softmax_cast=True)
    _, a = fused(model, feeds, [ATTENTION], F16)
    assert a["causal"] == 1


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("repeat", ["expand", "tile"])
def test_grouped_query_heads_are_absorbed(repeat, dtype):
    model, feeds = block(dtype, h=6, h_kv=2, repeat=repeat)
    out, _ = fused(model, feeds, [ATTENTION], dtype)
    assert list(out.graph.node[0].input) == ["Q", "K", "V"]  # K/V with 2 heads for 6 query heads


def test_grouped_query_with_kv_cache_and_k_transposed():
    model, feeds = block(h=8, h_kv=2, sq=3, skv=11, past=8, k_form="pre", mask="causal_add")
    _, a = fused(model, feeds, ["Concat", "Concat", ATTENTION])
    assert a["causal"] == 1 and a["k_transposed"] == 1


def test_multi_query_attention():
    model, feeds = block(h=4, h_kv=1, mask="add")
    fused(model, feeds, [ATTENTION])


@pytest.mark.parametrize("order", [1, 3])
def test_order_is_set(order):
    model, feeds = block(mask="add")
    _, a = fused(model, feeds, [ATTENTION], order=order)
    assert a["order"] == order


def test_dv_differs_from_d():
    model, feeds = block(d=8, dv=12, mask="add")
    fused(model, feeds, [ATTENTION])
