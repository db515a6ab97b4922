import numpy as np
import pytest
from onnx import helper

from .builders import GELU_ERF_ATOL, GELU_TANH_ATOL, Graph, check_rewrite, decision, sample
from .gelu_forms import projected

X = {"X": sample((4, 16))}
BIAS = np.random.default_rng(4).standard_normal(24) * 0.5
MS = [("com.microsoft", 1)]


def contrib(op, with_bias=False, upstream_bias=False, **attrs):
    g = Graph()
    h = projected(g, BIAS if upstream_bias else None)
    inputs = [h, g.const(BIAS, "gelu_bias")] if with_bias else [h]
    y = g.node(op, inputs, name="gelu", domain="com.microsoft", **attrs)
    return g.model({"X": [4, 16]}, {y: [4, 24]}, extra_opsets=MS)


def approximate(node):
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == "approximate").decode()


@pytest.mark.parametrize(
    "op,with_bias,expect",
    [("Gelu", False, "none"), ("BiasGelu", True, "none"), ("FastGelu", False, "tanh"), ("FastGelu", True, "tanh")],
)
def test_contrib_gelu(op, with_bias, expect):
    atol = GELU_ERF_ATOL if expect == "none" else GELU_TANH_ATOL
    out, report = check_rewrite(contrib(op, with_bias), ["MatMul", "com.quake.Gelu"], X, atol=atol)
    node = out.graph.node[1]
    assert approximate(node) == expect
    assert list(node.input) == ["matmul_out"] + (["gelu_bias"] if with_bias else [])
    d = decision(report, "contrib_gelu")
    assert d.replaced and d.op_type == f"com.microsoft.{op}"


@pytest.mark.parametrize("op", ["Gelu", "FastGelu"])
def test_upstream_bias_is_fused_when_the_op_has_none(op):
    atol = GELU_ERF_ATOL if op == "Gelu" else GELU_TANH_ATOL
    out, _ = check_rewrite(contrib(op, upstream_bias=True), ["MatMul", "com.quake.Gelu"], X, atol=atol)
    assert list(out.graph.node[1].input) == ["matmul_out", "bias"]


def test_own_bias_wins_over_upstream_add():
    out, _ = check_rewrite(
        contrib("FastGelu", with_bias=True, upstream_bias=True),
        ["MatMul", "Add", "com.quake.Gelu"],
        X,
        atol=GELU_TANH_ATOL,
    )


def test_quake_opset_added_beside_microsoft():
    out, _ = check_rewrite(contrib("Gelu"), ["MatMul", "com.quake.Gelu"], X, atol=GELU_ERF_ATOL)
    assert {(o.domain, o.version) for o in out.opset_import} == {("", 20), ("com.microsoft", 1), ("com.quake", 1)}
