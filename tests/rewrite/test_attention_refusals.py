"""Forms the attention rule must leave, each with its reason; the Softmax then
goes to the per-op Softmax rule, which replaces it alone as it always has."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from quake_onnx.rewrite import rewrite_model

from .attention_forms import block
from .builders import F32, SOFTMAX_ATOL, Graph, check_rewrite, op_types


def refused(model, reason: str, feeds=None):
    """The attention rule refuses with `reason`; the Softmax becomes com.quake Softmax, nothing else changes."""
    out, report = rewrite_model(model)
    (attention,) = [d for d in report.decisions if d.rule == "attention"]
    assert not attention.replaced and reason in attention.reason, attention
    (softmax,) = [d for d in report.decisions if d.rule == "softmax"]
    assert softmax.replaced
    assert op_types(out) == [("com.quake.Softmax" if t == "Softmax" else t) for t in op_types(model)]
    if feeds is not None:
        check_rewrite(model, op_types(out), feeds, atol=SOFTMAX_ATOL * 10)
    return attention.reason


def test_softmax_read_by_another_node():
    model, feeds = block()
    # The attention weights are also a graph output (output_attentions=True).
    model.graph.output.append(helper.make_tensor_value_info("softmax_out", F32, [2, 4, 16, 16]))
    refused(model, "intermediate softmax_out has other consumers", feeds)


def test_softmax_read_by_a_reduce():
    g = Graph()
    s = g.node("MatMul", ["Q", g.node("Transpose", ["K"], perm=[0, 1, 3, 2])])
    p = g.node("Softmax", [g.node("Div", [s, g.const(2.0)])], name="sm", axis=-1)
    y = g.node("MatMul", [p, "V"])
    mean = g.node("ReduceMean", [p, g.const(np.array([1]), dtype=np.int64)])
    model = g.model({"Q": [1, 2, 8, 4], "K": [1, 2, 8, 4], "V": [1, 2, 8, 4]}, {y: [1, 2, 8, 4], mean: [1, 1, 8, 8]})
    refused(model, "intermediate sm_out has other consumers")


def test_non_scalar_scale():
    g = Graph()
    s = g.node("MatMul", ["Q", g.node("Transpose", ["K"], perm=[0, 1, 3, 2])])
    per_head = g.const(np.array([0.5, 0.25]).reshape(1, 2, 1, 1))
    p = g.node("Softmax", [g.node("Mul", [s, per_head])], axis=-1)
    y = g.node("MatMul", [p, "V"])
    model = g.model({"Q": [1, 2, 8, 4], "K": [1, 2, 8, 4], "V": [1, 2, 8, 4]}, [y])
    refused(model, "not a constant scalar")


def test_mask_that_broadcasts_the_scores_up():
    # Scores [1, 2, 1, 8] (one query row) + M [1, 1, 5, 8]: the Add makes five rows.
    g = Graph()
    s = g.node("MatMul", ["Q", g.node("Transpose", ["K"], perm=[0, 1, 3, 2])])
    p = g.node("Softmax", [g.node("Add", [s, "M"])], axis=-1)
    y = g.node("MatMul", [p, "V"])
    model = g.model({"Q": [1, 2, 1, 4], "K": [1, 2, 8, 4], "V": [1, 2, 8, 4], "M": [1, 1, 5, 8]}, {y: [1, 2, 5, 4]})
    refused(model, "is not additive-broadcastable to the scores")


def test_mask_of_higher_rank():
    g = Graph()
    s = g.node("MatMul", ["Q", g.node("Transpose", ["K"], perm=[0, 2, 1])])
    p = g.node("Softmax", [g.node("Add", [s, "M"])], axis=-1)
    y = g.node("MatMul", [p, "V"])
    model = g.model({"Q": [2, 8, 4], "K": [2, 8, 4], "V": [2, 8, 4], "M": [3, 1, 1, 8]}, {y: [3, 2, 8, 4]})
    refused(model, "has more axes than the scores")


@pytest.mark.parametrize("axis", [2, -2])
def test_softmax_over_another_axis(axis):
    model, feeds = block(axis=axis)
    refused(model, f"the Softmax is over axis {axis}, not the last axis", feeds)


def test_heads_repeated_interleaved():
    # Unsqueeze before the head axis: query head h reads key head h % Hkv, not h // (H / Hkv).
    model, feeds = block(h=4, h_kv=2, repeat="interleave")
    refused(model, "K/V heads are repeated in an order", feeds)


def test_where_with_a_small_fill():
    model, feeds = block(mask="where", mask_value=-5.0)
    refused(model, "Where puts -5 on the masked scores", feeds)
    model, _ = block(mask="where", mask_value=float("nan"))  # NaN rows in the original
    refused(model, "Where puts nan on the masked scores")


def test_where_fill_of_higher_rank():
    # Where(m, scores [1, 4, 8, 8], fill [1, 1, 1, 1, 1]) is rank 5: the op's Y would lose an axis.
    g = Graph()
    s = g.node("MatMul", ["Q", g.node("Transpose", ["K"], perm=[0, 1, 3, 2])])
    w = g.node("Where", ["C", s, g.const(np.full((1, 1, 1, 1, 1), -1e9))])
    y = g.node("MatMul", [g.node("Softmax", [w], axis=-1), "V"])
    shapes = {"Q": [1, 4, 8, 4], "K": [1, 4, 8, 4], "V": [1, 4, 8, 4], "C": ([1, 1, 8, 8], helper.TensorProto.BOOL)}
    model = g.model(shapes, {y: [1, 1, 4, 8, 4]})
    refused(model, "Where's fill c0 has more axes than the scores")


def test_scale_after_the_mask():
    g = Graph()
    s = g.node("MatMul", ["Q", g.node("Transpose", ["K"], perm=[0, 1, 3, 2])])
    s = g.node("Div", [g.node("Add", [s, "M"]), g.const(2.0)])
    y = g.node("MatMul", [g.node("Softmax", [s], axis=-1), "V"])
    model = g.model({"Q": [1, 2, 8, 4], "K": [1, 2, 8, 4], "V": [1, 2, 8, 4], "M": [1, 1, 1, 8]}, [y])
    refused(model, "the scores are scaled after a mask is applied")


def test_scores_through_another_op():
    # Softcapping (Gemma 2): tanh on the scores is not the op's computation.
    g = Graph()
    s = g.node("MatMul", ["Q", g.node("Transpose", ["K"], perm=[0, 1, 3, 2])])
    y = g.node("MatMul", [g.node("Softmax", [g.node("Tanh", [s], name="cap")], axis=-1), "V"])
    model = g.model({"Q": [1, 2, 8, 4], "K": [1, 2, 8, 4], "V": [1, 2, 8, 4]}, [y])
    out, report = rewrite_model(model)
    assert [d.rule for d in report.decisions] == ["softmax"]  # not an attention block at all: no attention line


def test_a_classifier_softmax_is_not_a_candidate():
    g = Graph()
    y = g.node("Softmax", [g.node("MatMul", ["X", g.const(np.ones((4, 3)))])], axis=-1)
    out, report = rewrite_model(g.model({"X": [2, 4]}, {y: [2, 3]}))
    assert [d.rule for d in report.decisions] == ["softmax"]


def test_skipped_node_keeps_the_block():
    model, _ = block()
    out, report = rewrite_model(model, skip_nodes=frozenset({"scale"}))
    (attention,) = [d for d in report.decisions if d.rule == "attention"]
    assert attention.reason == "skipped by --skip-nodes"


def test_not_selected():
    model, _ = block()
    out, report = rewrite_model(model, ops=frozenset({"softmax"}))
    assert op_types(out) == ["Transpose", "MatMul", "Div", "com.quake.Softmax", "MatMul"]
    (attention,) = [d for d in report.decisions if d.rule == "attention"]
    assert attention.reason == "attention is not among the selected ops"


def test_float64_is_not_supported():
    model, _ = block(dtype=11)
    _, report = rewrite_model(model)
    (attention,) = [d for d in report.decisions if d.rule == "attention"]
    assert attention.reason == "element type double is not supported"
