import numpy as np
import pytest
from onnx import helper

from .builders import F16, F64, GELU_ERF_ATOL, GELU_TANH_ATOL, Graph, assert_untouched, check_rewrite, decision, sample
from .gelu_forms import projected

X = {"X": sample((4, 16))}
BIAS = np.random.default_rng(3).standard_normal(24) * 0.5
ATOL = {"none": GELU_ERF_ATOL, "tanh": GELU_TANH_ATOL}


def model(approximate=None, bias=None, dtype=None, bias_first=False):
    g = Graph(dtype) if dtype else Graph()
    attrs = {} if approximate is None else {"approximate": approximate}
    y = g.node("Gelu", [projected(g, bias, bias_first)], name="gelu", **attrs)
    return g.model({"X": [4, 16]}, {y: [4, 24]})


def attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("approximate", [None, "none", "tanh"])
def test_gelu(approximate):
    out, report = check_rewrite(model(approximate), ["MatMul", "com.quake.Gelu"], X, atol=ATOL[approximate or "none"])
    assert attrs(out.graph.node[1]) == {"approximate": (approximate or "none").encode(), "order": 2}
    assert decision(report, "gelu").reason == f"replaced by com.quake Gelu (approximate={approximate or 'none'})"


@pytest.mark.parametrize("bias_first", [False, True])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_add_is_fused(approximate, bias_first):
    m = model(approximate, BIAS, bias_first=bias_first)
    out, report = check_rewrite(m, ["MatMul", "com.quake.Gelu"], X, atol=ATOL[approximate])
    assert list(out.graph.node[1].input) == ["matmul_out", "bias"]
    assert decision(report, "gelu").reason.endswith("bias fused)")


def test_bias_that_broadcasts_is_not_fused():
    # h is [4, 1]: the Add broadcasts it to [4, 24], which com.quake Gelu's B cannot do.
    g = Graph()
    h = g.node("MatMul", ["X", g.const(np.ones((16, 1)), "W")], name="matmul")
    y = g.node("Gelu", [g.node("Add", [h, g.const(BIAS, "bias")], name="bias_add")], name="gelu")
    m = g.model({"X": [4, 16]}, {y: [4, 24]})
    check_rewrite(m, ["MatMul", "Add", "com.quake.Gelu"], X, atol=GELU_ERF_ATOL)


def test_bias_add_read_elsewhere_is_not_fused():
    g = Graph()
    b = projected(g, BIAS)
    y = g.node("Gelu", [b], name="gelu")
    z = g.node("Neg", [b], name="neg")
    m = g.model({"X": [4, 16]}, {y: [4, 24], z: [4, 24]})
    check_rewrite(m, ["MatMul", "Add", "com.quake.Gelu", "Neg"], X, atol=GELU_ERF_ATOL)


def test_skipped_bias_add_is_not_fused():
    out, _ = check_rewrite(
        model("none", BIAS),
        ["MatMul", "Add", "com.quake.Gelu"],
        X,
        atol=GELU_ERF_ATOL,
        skip_nodes=frozenset({"bias_add"}),
    )


def test_float16():
    check_rewrite(model("tanh", BIAS, F16), ["MatMul", "com.quake.Gelu"], {"X": sample((4, 16), np.float16)}, atol=6e-3)


def test_double():
    assert_untouched(model(dtype=F64), "gelu", "element type double is not supported")
