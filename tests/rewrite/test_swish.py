"""ONNX Swish (opset 24) -> com.quake Silu(alpha)."""

import numpy as np
import pytest
from onnx import helper

from quake_onnx.rewrite import rewrite_model
from quake_onnx.rewrite.layout import NCHWC_REASON

from .builders import F16, F64, SIGMOID_ATOL, Graph, assert_untouched, check_rewrite, decision, op_types, run, sample
from .test_conv_layout import SHAPE, conv

OPSET = 24  # Swish's first
X = {"X": sample((4, 32))}


def swish_model(alpha=None, dtype=None, shape=(4, 32)):
    g = Graph(dtype) if dtype else Graph()
    attrs = {} if alpha is None else {"alpha": alpha}
    y = g.node("Swish", ["X"], name="swish", **attrs)
    return g.model({"X": list(shape)}, [y], opset=OPSET)


def alpha_of(model):
    node = next(n for n in model.graph.node if n.op_type == "Silu")
    return helper.get_attribute_value(next(a for a in node.attribute if a.name == "alpha"))


@pytest.mark.parametrize("alpha", [None, 1.0, 0.5, 1.702, 3.0])
def test_swish(alpha):
    out, report = check_rewrite(swish_model(alpha), ["com.quake.Silu"], X, atol=SIGMOID_ATOL)
    assert alpha_of(out) == pytest.approx(1.0 if alpha is None else alpha)
    d = decision(report, "swish")
    assert d.replaced and d.node == "swish" and d.op_type == "Swish"
    assert d.reason == f"replaced by com.quake Silu (alpha={1.0 if alpha is None else alpha:g})"


def test_outputs_follow_the_formula():
    """Not just ORT's Swish: x * sigmoid(alpha x) in float64, within the Silu budget."""
    out, _ = rewrite_model(swish_model(1.702))
    x = X["X"].astype(np.float64)
    (got,) = run(out, X)
    np.testing.assert_allclose(got, x / (1 + np.exp(-1.702 * x)), atol=SIGMOID_ATOL)


def test_float16():
    feeds = {"X": sample((4, 32), np.float16)}
    check_rewrite(swish_model(1.5, F16), ["com.quake.Silu"], feeds, atol=SIGMOID_ATOL + 4e-3)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("inf")])
def test_alpha_that_silu_cannot_take_is_refused(alpha):
    assert_untouched(swish_model(alpha), "swish", f"alpha {alpha:g} is not a finite number > 0")


def test_not_selected():
    assert_untouched(swish_model(), "swish", "silu is not among the selected ops", ops=frozenset({"sigmoid", "gelu"}))


def test_double():
    assert_untouched(swish_model(dtype=F64), "swish", "element type double is not supported")


def test_skipped():
    assert_untouched(swish_model(), "swish", "skipped by --skip-nodes", skip_nodes=frozenset({"swish"}))


def conv_swish_conv():
    g = Graph()
    y = conv(g, g.node("Swish", [conv(g, "X", "c1")], name="swish"), "c2")
    return g.model({"X": SHAPE}, {y: SHAPE}, opset=OPSET)


def test_between_convs_it_is_kept_for_the_conv_layout():
    model = conv_swish_conv()
    out, report = rewrite_model(model)
    assert op_types(out) == ["Conv", "Swish", "Conv"]
    assert [(d.rule, d.replaced, d.reason) for d in report.decisions] == [("swish", False, NCHWC_REASON)]


def test_in_a_laid_out_model_it_is_replaced():
    out, report = rewrite_model(conv_swish_conv(), keep_conv_layout=False)
    assert op_types(out) == ["Conv", "com.quake.Silu", "Conv"]
    assert decision(report, "swish").replaced


def test_after_a_conv_into_the_graph_output_it_is_replaced():
    """Nothing reads it blocked: ORT reorders after it anyway."""
    g = Graph()
    y = g.node("Swish", [conv(g, "X", "c1")], name="swish")
    model = g.model({"X": SHAPE}, {y: SHAPE}, opset=OPSET)
    check_rewrite(model, ["Conv", "com.quake.Silu"], {"X": sample(SHAPE, scale=1.0)}, atol=SIGMOID_ATOL)
