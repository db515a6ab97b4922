"""Attention blocks as exporters write them for any sequence length: heads
split by Reshape(x, Concat(batch, seq, -1, D)) with batch and seq read from
Shape at run time, so onnx's inference gives every head count a fresh name.

The head counts are read off the Reshape (-1 = hidden / D), and a block
whose score size is symbolic is left to the per-op rewrite by default (below
the break-even the fused op is slower), fused with --min-elements 0, and
always fused when its query block is a short static decode step."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from quake_onnx.rewrite import rewrite_model
from quake_onnx.rewrite.engine import BREAK_EVEN

from .builders import F32, Graph, check_rewrite, op_types, sample

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
    assert not d.replaced and d.reason.startswith("the score size is symbolic")
    assert "com.quake.Softmax" in op_types(out) and "com.quake.Attention" not in op_types(out)


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
