import pytest
from onnx import helper

from .builders import SIGMOID_ATOL, Graph, assert_untouched, check_rewrite, sample

X = {"X": sample((4, 32))}


def quick_gelu(**attrs):
    g = Graph()
    y = g.node("QuickGelu", ["X"], name="qg", domain="com.microsoft", **attrs)
    return g.model({"X": [4, 32]}, [y], extra_opsets=[("com.microsoft", 1)])


@pytest.mark.parametrize("alpha", [None, 1.0, 1.5])
def test_quick_gelu(alpha):
    attrs = {} if alpha is None else {"alpha": alpha}
    out, _ = check_rewrite(quick_gelu(**attrs), ["com.quake.Silu"], X, atol=SIGMOID_ATOL)
    got = next(helper.get_attribute_value(a) for a in out.graph.node[0].attribute if a.name == "alpha")
    assert got == pytest.approx(1.702 if alpha is None else alpha)


def test_non_positive_alpha():
    assert_untouched(quick_gelu(alpha=-0.5), "quick_gelu", "alpha -0.5 is not > 0")
