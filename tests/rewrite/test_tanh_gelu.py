import math

import numpy as np
import pytest
from onnx import TensorProto, helper

from quake_onnx.rewrite import rewrite_model

from .builders import F16, GELU_TANH_ATOL, Graph, assert_untouched, check_rewrite, decision, op_types, sample
from .gelu_forms import TAILS, projected, tanh_gelu

X = {"X": sample((4, 16))}


def model(dtype=None, bias=None, **form):
    g = Graph(dtype) if dtype else Graph()
    return g.model({"X": [4, 16]}, {tanh_gelu(g, projected(g, bias), **form): [4, 24]})


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("cube", ["pow", "mul", "mul_pow2"])
@pytest.mark.parametrize("swap", [False, True])
def test_every_ordering(tail, cube, swap):
    out, report = check_rewrite(
        model(tail=tail, cube=cube, swap=swap), ["MatMul", "com.quake.Gelu"], X, atol=GELU_TANH_ATOL
    )
    node = out.graph.node[1]
    assert helper.get_attribute_value(node.attribute[0]) == b"tanh"
    d = decision(report, "tanh_gelu")
    assert d.replaced and d.node == "tanh"


def test_bias_is_fused():
    out, report = check_rewrite(
        model(bias=np.linspace(-1, 1, 24)), ["MatMul", "com.quake.Gelu"], X, atol=GELU_TANH_ATOL
    )
    assert list(out.graph.node[1].input) == ["matmul_out", "bias"]


def test_float16():
    check_rewrite(
        model(F16), ["MatMul", "com.quake.Gelu"], {"X": sample((4, 16), np.float16)}, atol=GELU_TANH_ATOL + 4e-3
    )


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


# --- ONNX's own Gelu(approximate="tanh") function body: Sum for Add, constants computed by CastLike / Sqrt.


def constant(g: Graph, value: float, name: str) -> str:
    return g.node("Constant", [], name=name, value=helper.make_tensor(name, TensorProto.FLOAT, [], [value]))


def cast_like(g: Graph, value: float, name: str) -> str:
    return g.node("CastLike", [constant(g, value, f"{name}_c"), "X"], name=name)


def function_body(g: Graph, inner: str = "Sum", one: str = "Sum", two_over_pi: float = 2 / math.pi, extra=None) -> str:
    """onnx/defs/math/defs.cc's Gelu body: 0.5 x * Sum(1, Tanh(Sqrt(2/pi) * Sum(x, 0.044715 x^3)))."""
    cube = g.node("Pow", ["X", cast_like(g, 3.0, "three")], name="cube")
    k = g.node("Mul", [cast_like(g, 0.044715, "c0"), cube], name="k")
    s = g.node(inner, ["X", k] + (extra or []), name="inner")
    root = g.node("Sqrt", [cast_like(g, two_over_pi, "two_over_pi")], name="root")
    t = g.node("Tanh", [g.node("Mul", [root, s], name="scale")], name="tanh")
    p = g.node(one, [cast_like(g, 1.0, "one"), t], name="phi")
    return g.node("Mul", [g.node("Mul", [cast_like(g, 0.5, "half"), "X"], name="halfx"), p], name="y")


XB = {"X": sample((3, 4, 5))}


@pytest.mark.parametrize("inner,one", [("Sum", "Sum"), ("Sum", "Add"), ("Add", "Sum")])
def test_function_body(inner, one):
    g = Graph()
    model = g.model({"X": [3, 4, 5]}, [function_body(g, inner, one)])
    out, report = check_rewrite(model, ["com.quake.Gelu"], XB, atol=GELU_TANH_ATOL)
    assert helper.get_attribute_value(out.graph.node[0].attribute[0]) == b"tanh"
    assert decision(report, "tanh_gelu").replaced
    assert not out.graph.initializer


def test_function_body_wrong_computed_constant():
    """sqrt(1/pi) where sqrt(2/pi) belongs: the computed value is named in the reason."""
    g = Graph()
    model = g.model({"X": [3, 4, 5]}, [function_body(g, two_over_pi=1 / math.pi)])
    assert_untouched(model, "tanh_gelu", "constant 0.5641896 is not sqrt(2/pi) (0.7978846)")


def test_sum_of_three_is_no_candidate():
    """Sum(x, 0.044715 x^3, z) is not x + 0.044715 x^3."""
    g = Graph()
    model = g.model({"X": [3, 4, 5], "Z": [3, 4, 5]}, [function_body(g, extra=["Z"])])
    out, report = rewrite_model(model)
    assert "Tanh" in op_types(out) and "com.quake.Gelu" not in op_types(out)
    assert not [d for d in report.decisions if d.rule == "tanh_gelu"]


def test_one_plus_tanh_as_sum_of_three_is_refused():
    g = Graph()
    model = g.model({"X": [3, 4, 5]}, [function_body(g)])
    phi = next(n for n in model.graph.node if n.name == "phi")
    phi.input.append("one_out")  # 1 + tanh + 1
    assert_untouched(model, "tanh_gelu", "Tanh output is not added to 1")
