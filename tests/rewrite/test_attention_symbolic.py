"""Attention blocks as exporters write them for any sequence length: heads
split by Reshape(x, Concat(batch, seq, -1, D)) with batch and seq read from
Shape at run time, so onnx's inference gives every head count a fresh name.

The head counts are read off the Reshape (-1 = hidden / D). A block whose
score size is symbolic is fused at the default break-even when it is a
decoder's: its mask causal for every size (causal=1 skips the masked tiles),
its K/V read from a KV cache (Concat(past, new)), or its query block a short
static decode step; any other (an encoder's, non-causal and cache-less) is
left to the per-op rewrite (below the break-even the fused op is slower),
fused with --min-elements 0."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from quake_onnx.rewrite import rewrite_model
from quake_onnx.rewrite.engine import BREAK_EVEN

from .attention_forms import bound as attention_bound
from .builders import F32, Graph, check_rewrite, op_types, sample
from .decoder_export import attrs, bound, expected_ops, feeds, llama_export

HIDDEN, HEADS = 32, 4
D = HIDDEN // HEADS


def _split_heads(g: Graph, x: str, batch: str, seq: str, perm) -> str:
    """x [B, S, HIDDEN] -> Transpose(Reshape(x, [B, S, -1, D]), perm), B and S read at run time."""
    shape = g.node(
        "Concat",
        [
            g.node("Unsqueeze", [batch, g.const(np.array([0]), dtype=np.int64)]),
            g.node("Unsqueeze", [seq, g.const(np.array([0]), dtype=np.int64)]),
            g.const(np.array([-1]), dtype=np.int64),
            g.const(np.array([D]), dtype=np.int64),
        ],
        axis=0,
    )
    return g.node("Transpose", [g.node("Reshape", [x, shape])], perm=perm)


def encoder_block():
    """BERT-style self-attention over X [B, S, HIDDEN] with symbolic B and S."""
    g = Graph()
    shape = g.node("Shape", ["X"])
    batch = g.node("Gather", [shape, g.const(np.array(0), dtype=np.int64)], axis=0)
    seq = g.node("Gather", [shape, g.const(np.array(1), dtype=np.int64)], axis=0)
    proj = {n: g.node("MatMul", ["X", g.const(sample((HIDDEN, HIDDEN), seed=i) * 0.3)]) for i, n in enumerate("qkv")}
    q = _split_heads(g, proj["q"], batch, seq, [0, 2, 1, 3])
    k = _split_heads(g, proj["k"], batch, seq, [0, 2, 3, 1])  # K already transposed, as BERT exports it
    v = _split_heads(g, proj["v"], batch, seq, [0, 2, 1, 3])
    s = g.node("Mul", [g.node("MatMul", [q, k]), g.const(1 / np.sqrt(D))])
    p = g.node("Softmax", [s], name="sm", axis=-1)
    y = g.node("MatMul", [p, v])
    model = g.model({"X": (["batch", "seq", HIDDEN], TensorProto.FLOAT)}, {y: ["batch", HEADS, "seq", D]})
    return model, {"X": sample((2, 24, HIDDEN))}


def decode_block():
    """One query row (static Sq = 1) against a KV cache of symbolic length."""
    g = Graph()
    s = g.node("MatMul", ["Q", g.node("Transpose", ["K"], perm=[0, 1, 3, 2])])
    p = g.node("Softmax", [g.node("Div", [s, g.const(np.sqrt(D))])], name="sm", axis=-1)
    y = g.node("MatMul", [p, "V"])
    model = g.model(
        {"Q": [1, HEADS, 1, D], "K": ([1, HEADS, "past", D], F32), "V": ([1, HEADS, "past", D], F32)},
        {y: [1, HEADS, 1, D]},
    )
    return model, {
        "Q": sample((1, HEADS, 1, D)),
        "K": sample((1, HEADS, 40, D), seed=2),
        "V": sample((1, HEADS, 40, D), seed=3),
    }


def attention_decision(report):
    (d,) = [d for d in report.decisions if d.rule == "attention"]
    return d


def test_symbolic_encoder_is_left_to_the_per_op_rewrite():
    model, _ = encoder_block()
    out, report = rewrite_model(model, min_elements=BREAK_EVEN)
    d = attention_decision(report)
    assert not d.replaced and d.reason.startswith("the score size is symbolic and the block is neither causal")
    # The per-op rewrite: the Softmax alone replaced, every other node as it was.
    assert op_types(out) == ["com.quake.Softmax" if t == "Softmax" else t for t in op_types(model)]


def test_symbolic_encoder_heads_are_read_off_the_reshape():
    # --min-elements 0: fused, the head counts (fresh symbols after inference) read as 4 from -1 = 32 / 8.
    model, feeds = encoder_block()
    out, report = rewrite_model(model, min_elements={"attention": 0})
    assert attention_decision(report).replaced
    # ops.md's bound: 2e-3 x max|V|; V = X Wv here reaches about 25.
    check_rewrite(model, op_types(out), feeds, atol=2e-3 * 30, min_elements={"attention": 0})


def test_decode_step_is_fused_at_any_cache_length():
    model, feeds = decode_block()
    out, report = rewrite_model(model, min_elements=BREAK_EVEN)
    assert attention_decision(report).replaced
    assert op_types(out) == ["com.quake.Attention"]
    check_rewrite(model, op_types(out), feeds, atol=2e-3, min_elements=BREAK_EVEN)


def test_symbolic_causal_decoder_block_is_fused():
    # A decoder's prefill exported for any length: its run-time mask is causal for every size.
    model, block, pv = llama_export(past=False)
    f = feeds(model, 9)
    out, report = check_rewrite(
        model, expected_ops(model, block, pv, causal=True), f, atol=bound(model, f), min_elements=BREAK_EVEN
    )
    assert attention_decision(report).replaced and attrs(out)["causal"] == 1


def test_symbolic_prefill_with_a_padding_mask_is_left_to_the_per_op_rewrite():
    # Causal And-ed with a padding mask proves nothing, and the prefill reads no cache.
    model, _, _ = llama_export(past=False, variant="padding")
    out, report = rewrite_model(model, min_elements=BREAK_EVEN)
    d = attention_decision(report)
    assert not d.replaced and d.reason.startswith("the score size is symbolic and the block is neither causal")
    assert op_types(out) == ["com.quake.Softmax" if t == "Softmax" else t for t in op_types(model)]


def test_symbolic_decode_block_reading_a_cache_is_fused():
    # Symbolic new tokens T and past P, K/V = Concat(past, new); the padding mask is not causal
    # (it stays the op's M): fused because the block reads a KV cache.
    model, block, pv = llama_export(past=True, variant="padding")
    f = feeds(model, 3, 7)
    out, report = check_rewrite(
        model, expected_ops(model, block, pv, causal=False), f, atol=bound(model, f), min_elements=BREAK_EVEN
    )
    assert attention_decision(report).replaced
    a = attrs(out)
    assert a["causal"] == 0 and a["inputs"][1:3] == ["present_key", "present_value"] and len(a["inputs"]) == 4


def onnx_attention_block(is_causal: int):
    """ONNX Attention (opset 23) over Q, K, V [1, HEADS, seq, D] with a symbolic seq."""
    g = Graph()
    shape = [1, HEADS, "seq", D]
    y = g.node("Attention", ["Q", "K", "V"], name="att", is_causal=is_causal)
    model = g.model({n: shape for n in "QKV"}, {y: shape}, opset=23)
    return model, {n: sample((1, HEADS, 24, D), seed=i) for i, n in enumerate("QKV")}


def test_symbolic_causal_onnx_attention_is_fused_and_non_causal_is_not():
    model, feeds = onnx_attention_block(1)
    check_rewrite(model, ["com.quake.Attention"], feeds, atol=2e-3 * 5, min_elements=BREAK_EVEN)
    model, _ = onnx_attention_block(0)
    out, report = rewrite_model(model, min_elements=BREAK_EVEN)
    (d,) = [d for d in report.decisions if d.rule == "onnx_attention"]
    assert not d.replaced and d.reason.startswith("the score size is symbolic and the block is neither causal")
    assert op_types(out) == ["Attention"]


def unrelated_lengths_block():
    """Q [1, H, seq, D] against K, V [1, H, kv, D], two independent symbols, masked at run
    time by key j <= query i + (kv - seq): the causal triangle for every size, but kv may be
    less than seq, and then the first rows see no key (the original's float-lowest fill gives
    them the mean of V)."""
    g = Graph()

    def length(x):
        return g.node("Gather", [g.node("Shape", [x]), g.const(np.array(2), dtype=np.int64)], axis=0)

    zero, one = g.const(np.array(0), dtype=np.int64), g.const(np.array(1), dtype=np.int64)
    lq, lk = length("Q"), length("K")
    rows = g.node("Add", [g.node("Range", [zero, lq, one]), g.node("Sub", [lk, lq])])
    qi = g.node("Unsqueeze", [rows, g.const(np.array([1]), dtype=np.int64)])
    ki = g.node("Unsqueeze", [g.node("Range", [zero, lk, one]), g.const(np.array([0]), dtype=np.int64)])
    lowest = np.float32(np.finfo(np.float32).min)
    mask = g.node("Where", [g.node("LessOrEqual", [ki, qi]), g.const(np.float32(0.0)), g.const(lowest)])
    s = g.node("MatMul", ["Q", g.node("Transpose", ["K"], perm=[0, 1, 3, 2])])
    s = g.node("Add", [g.node("Div", [s, g.const(np.float32(np.sqrt(D)))]), mask])
    y = g.node("MatMul", [g.node("Softmax", [s], name="sm", axis=-1), "V"])
    kv = ([1, HEADS, "kv", D], F32)
    model = g.model({"Q": ([1, HEADS, "seq", D], F32), "K": kv, "V": kv}, {y: [1, HEADS, "seq", D]})
    q = sample((1, HEADS, 12, D))
    return model, {"Q": q, "K": sample((1, HEADS, 8, D), seed=1), "V": sample((1, HEADS, 8, D), seed=2)}


def test_a_run_time_triangle_that_may_have_fewer_keys_than_queries_is_not_causal():
    # kv - seq is not provably >= 0 (a past would be): causal=1 would give the first
    # rows zeros where kv < seq. The mask stays the op's M.
    model, f = unrelated_lengths_block()
    out, report = rewrite_model(model, min_elements={})
    d = attention_decision(report)
    assert d.replaced and d.reason.endswith("(scale=0.353553, mask)"), d.reason
    check_rewrite(model, op_types(out), f, atol=attention_bound(f), min_elements={})
