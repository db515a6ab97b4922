"""com.microsoft.MultiHeadAttention and ONNX Attention (opset 23) -> com.quake
Attention where their inputs and attributes map; kept with the reason where not.
Outputs are compared with ONNX Runtime's own kernels for those ops."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

from quake_onnx.rewrite import rewrite_model

from .builders import F16, F32, NP, Graph, check_rewrite, decision, op_types, sample

MS = [("com.microsoft", 1)]
SPLIT = ["Reshape", "Transpose"]
MERGE = ["Transpose", "Reshape"]


def _feeds(shapes: dict, dtype=F32) -> dict:
    return {n: sample(s, NP[dtype], scale=1.0, seed=i) for i, (n, s) in enumerate(shapes.items())}


def _bound(feeds, dtype) -> float:
    return (2e-3 + (4e-3 if dtype == F16 else 0.0)) * float(np.abs(feeds["V"]).max())


def mha(dtype=F32, sq=5, skv=7, heads=2, hidden=16, bnsh=False, padding=False, bias=False, **attrs):
    g = Graph(dtype)
    kv = [2, heads, skv, hidden // heads] if bnsh else [2, skv, hidden]
    shapes = {"Q": [2, sq, hidden], "K": kv, "V": kv}
    inputs = ["Q", "K", "V", "", "KPM" if padding else ""] + (["AB"] if bias else [])
    y = g.node("MultiHeadAttention", inputs, name="mha", domain="com.microsoft", num_heads=heads, **attrs)
    spec = dict(shapes)
    if padding:
        spec["KPM"] = ([2, skv], TensorProto.INT32)
    if bias:
        spec["AB"] = [1, heads, sq, skv]
    feeds = _feeds(shapes, dtype)
    if padding:
        feeds["KPM"] = np.ones((2, skv), np.int32)
        feeds["KPM"][0, skv - 2 :] = 0
    if bias:
        feeds["AB"] = sample((1, heads, sq, skv), NP[dtype], scale=1.0, seed=9)
    return g.model(spec, {y: [2, sq, hidden]}, extra_opsets=MS), feeds


@pytest.mark.parametrize("dtype", [F32, F16])
def test_mha_separate_qkv(dtype):
    # With a mask ORT's MultiHeadAttention falls back to unfused products: ours replaces it.
    model, feeds = mha(dtype, padding=True)
    masks = ["Greater", "Where", "Reshape"]
    out, report = check_rewrite(
        model, SPLIT * 3 + masks + ["com.quake.Attention"] + MERGE, feeds, atol=_bound(feeds, dtype)
    )
    assert "scale=0.353553" in decision(report, "mha").reason


def test_mha_without_mask_stays_on_orts_flash_kernel():
    model, _ = mha()
    out, report = rewrite_model(model)
    assert [n.op_type for n in out.graph.node] == ["MultiHeadAttention"]
    assert decision(report, "mha").reason == (
        "ORT's own flash attention runs this MultiHeadAttention (no mask, bias or causal flag)"
    )


def test_mha_bnsh_key_value_and_custom_scale():
    model, feeds = mha(bnsh=True, scale=0.2, padding=True)
    masks = ["Greater", "Where", "Reshape"]
    out, report = check_rewrite(model, SPLIT + masks + ["com.quake.Attention"] + MERGE, feeds, atol=_bound(feeds, F32))
    assert "scale=0.2" in decision(report, "mha").reason


@pytest.mark.parametrize("dtype", [F32, F16])
def test_mha_key_padding_mask_and_attention_bias(dtype):
    model, feeds = mha(dtype, padding=True, bias=True)
    masks = ["Greater", "Where", "Reshape", "Add"]
    check_rewrite(model, SPLIT * 3 + masks + ["com.quake.Attention"] + MERGE, feeds, atol=_bound(feeds, dtype))


def test_mha_unidirectional_is_causal():
    model, feeds = mha(sq=6, skv=6, unidirectional=1)
    out, report = check_rewrite(model, SPLIT * 3 + ["com.quake.Attention"] + MERGE, feeds, atol=_bound(feeds, F32))
    assert "causal" in decision(report, "mha").reason


@pytest.mark.parametrize(
    "case,reason",
    [
        ("bias", "a bias input is not mapped"),
        ("past", "past key/value"),
        ("unidirectional", "unidirectional with Sq and Skv not provably equal"),
        ("present", "its output present_k (present key/value or qk) is read"),
    ],
)
def test_mha_refusals(case, reason):
    g = Graph()
    inputs = [
        "Q",
        "K",
        "V",
        "B" if case == "bias" else "",
        "",
        "",
        "PK" if case == "past" else "",
        "PV" if case == "past" else "",
    ]
    outputs = ["y", "present_k", "present_v"] if case == "present" else ["y"]
    g.node(
        "MultiHeadAttention",
        inputs,
        name="mha",
        domain="com.microsoft",
        outputs=outputs,
        num_heads=2,
        unidirectional=int(case == "unidirectional"),
    )
    spec = {"Q": [1, 5, 16], "K": [1, 7, 16], "V": [1, 7, 16], "B": [48], "PK": [1, 2, 3, 8], "PV": [1, 2, 3, 8]}
    spec = {k: v for k, v in spec.items() if k in inputs}
    result = {"y": [1, 5, 16]} | ({"present_k": [1, 2, 7, 8]} if case == "present" else {})
    out, report = rewrite_model(g.model(spec, result, extra_opsets=MS))
    d = decision(report, "mha")
    assert not d.replaced and reason in d.reason, d
    assert op_types(out) == ["com.microsoft.MultiHeadAttention"]


def onnx_attention(dtype=F32, q_heads=4, kv_heads=2, sq=5, skv=7, mask=None, three_d=False, **attrs):
    g = Graph(dtype)
    if three_d:
        shapes = {"Q": [2, sq, q_heads * 8], "K": [2, skv, kv_heads * 8], "V": [2, skv, kv_heads * 8]}
        attrs |= {"q_num_heads": q_heads, "kv_num_heads": kv_heads}
        out_shape = [2, sq, q_heads * 8]
    else:
        shapes = {"Q": [2, q_heads, sq, 8], "K": [2, kv_heads, skv, 8], "V": [2, kv_heads, skv, 8]}
        out_shape = [2, q_heads, sq, 8]
    spec = dict(shapes)
    feeds = _feeds(shapes, dtype)
    if mask == "bool":
        spec["C"] = ([2, 1, sq, skv], TensorProto.BOOL)
        feeds["C"] = np.random.default_rng(0).random((2, 1, sq, skv)) < 0.7
        feeds["C"][..., 0] = True
    if mask == "float":
        spec["C"] = [1, 1, sq, skv]
        feeds["C"] = sample((1, 1, sq, skv), NP[dtype], scale=1.0, seed=7)
    y = g.node("Attention", ["Q", "K", "V"] + (["C"] if mask else []), name="att", **attrs)
    return g.model(spec, {y: out_shape}, opset=23), feeds


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_onnx_attention_gqa_with_masks(mask, dtype):
    model, feeds = onnx_attention(dtype, mask=mask)
    expected = (["Where"] if mask == "bool" else []) + ["com.quake.Attention"]
    check_rewrite(model, expected, feeds, atol=_bound(feeds, dtype))


def test_onnx_attention_causal_and_scale():
    model, feeds = onnx_attention(sq=6, skv=6, is_causal=1, scale=0.3)
    _, report = check_rewrite(model, ["com.quake.Attention"], feeds, atol=_bound(feeds, F32))
    assert decision(report, "onnx_attention").reason == "replaced by com.quake Attention (scale=0.3, causal)"


def test_onnx_attention_3d_inputs():
    model, feeds = onnx_attention(three_d=True)
    check_rewrite(model, SPLIT * 3 + ["com.quake.Attention"] + MERGE, feeds, atol=_bound(feeds, F32))


@pytest.mark.parametrize(
    "attrs,reason",
    [
        ({"softcap": 30.0}, "softcap is not mapped"),
        ({"is_causal": 1}, "is_causal with Sq and Skv not provably equal"),
    ],
)
def test_onnx_attention_refusals(attrs, reason):
    model, _ = onnx_attention(**attrs)
    out, report = rewrite_model(model)
    d = decision(report, "onnx_attention")
    assert not d.replaced and reason in d.reason, d
    assert op_types(out) == ["Attention"]
