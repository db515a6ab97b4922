import numpy as np
import pytest
from onnx import helper

from quake_onnx.rewrite import rewrite_model

from .builders import F16, GELU_TANH_ATOL, Graph, assert_untouched, check_rewrite, decision, sample
from .gelu_forms import TAILS, projected, tanh_gelu

X = {"X": sample((4, 16))}


def model(dtype=None, bias=None, **form):
    g = Graph(dtype) if dtype else Graph()
    return g.model({"X": [4, 16]}, {tanh_gelu(g, projected(g, bias), **form): [4, 24]})


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("cube", ["pow", "mul", "mul_pow2"])
@pytest.mark.parametrize("swap", [False, True])
def test_every_ordering(tail, cube, swap):
    out, report = check_rewrite(model(tail=tail, cube=cube, swap=swap), ["MatMul", "com.quake.Gelu"], X, atol=GELU_TANH_ATOL)
    node = out.graph.node[1]
    assert helper.get_attribute_value(node.attribute[0]) == b"tanh"
    d = decision(report, "tanh_gelu")
    assert d.replaced and d.node == "tanh"


def test_bias_is_fused():
    out, report = check_rewrite(model(bias=np.linspace(-1, 1, 24)), ["MatMul", "com.quake.Gelu"], X, atol=GELU_TANH_ATOL)
    assert list(out.graph.node[1].input) == ["matmul_out", "bias"]


def test_float16():
    check_rewrite(model(F16), ["MatMul", "com.quake.Gelu"], {"X": sample((4, 16), np.float16)}, atol=GELU_TANH_ATOL + 4e-3)


def test_wrong_constant():
    assert_untouched(model(coef=0.05), "tanh_gelu", "constant 0.05 is not 0.044715")


def test_extra_consumer_of_an_intermediate():
    g = Graph()
    y = tanh_gelu(g, "X")
    assert_untouched(g.model({"X": [4, 16]}, [y, "tanh_out"]), "tanh_gelu", "intermediate tanh_out has other consumers")


def test_plain_tanh_is_no_candidate():
    g = Graph()
    _, report = rewrite_model(g.model({"X": [4, 16]}, [g.node("Tanh", ["X"])]))
    assert report.decisions == []
