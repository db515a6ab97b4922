import numpy as np
import pytest
from onnx import helper

from quake_onnx.rewrite import rewrite_model

from .builders import F16, F64, GELU_ERF_ATOL, Graph, assert_untouched, check_rewrite, decision, sample
from .gelu_forms import TAILS, erf_gelu, projected

X = {"X": sample((4, 16))}
BIAS = np.random.default_rng(2).standard_normal(24) * 0.5


def model(dtype=None, bias=None, **form):
    g = Graph(dtype) if dtype else Graph()
    return g.model({"X": [4, 16]}, {erf_gelu(g, projected(g, bias), **form): [4, 24]})


def approximate(model):
    node = next(n for n in model.graph.node if n.op_type == "Gelu")
    return helper.get_attribute_value(next(a for a in node.attribute if a.name == "approximate")).decode()


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("scale", ["div", "mul"])
@pytest.mark.parametrize("swap_add", [False, True])
def test_every_ordering(tail, scale, swap_add):
    out, report = check_rewrite(
        model(tail=tail, scale=scale, swap_add=swap_add), ["MatMul", "com.quake.Gelu"], X, atol=GELU_ERF_ATOL
    )
    assert approximate(out) == "none"
    d = decision(report, "erf_gelu")
    assert d.replaced and d.node == "erf" and d.op_type == "Erf"
    assert out.graph.node[1].name == "erf/quake_Gelu"
    assert [i.name for i in out.graph.initializer] == ["W"]  # the pattern's constants left with it


@pytest.mark.parametrize("bias_first", [False, True])
def test_bias_is_fused(bias_first):
    g = Graph()
    y = erf_gelu(g, projected(g, BIAS, bias_first))
    m = g.model({"X": [4, 16]}, {y: [4, 24]})
    out, report = check_rewrite(m, ["MatMul", "com.quake.Gelu"], X, atol=GELU_ERF_ATOL)
    assert list(out.graph.node[1].input) == ["matmul_out", "bias"]
    assert "bias fused" in decision(report, "erf_gelu").reason


def test_bias_read_elsewhere_is_not_fused():
    g = Graph()
    h = projected(g, BIAS)
    y = erf_gelu(g, h)
    m = g.model({"X": [4, 16]}, {y: [4, 24], h: [4, 24]})
    out, _ = check_rewrite(m, ["MatMul", "Add", "com.quake.Gelu"], X, atol=GELU_ERF_ATOL)


def test_constants_from_constant_nodes():
    g = Graph()
    y = erf_gelu(g, "X")
    # Same model, every initializer turned into a Constant node (how torch.onnx often exports).
    nodes = [helper.make_node("Constant", [], [t.name], value=t, name=f"const_{t.name}") for t in g.inits]
    g.nodes[:0] = nodes
    g.inits = []
    out, _ = check_rewrite(g.model({"X": [4, 16]}, [y]), ["com.quake.Gelu"], X, atol=GELU_ERF_ATOL)


def test_float16():
    check_rewrite(
        model(F16), ["MatMul", "com.quake.Gelu"], {"X": sample((4, 16), np.float16)}, atol=GELU_ERF_ATOL + 4e-3
    )


def test_wrong_constant():
    assert_untouched(model(sqrt2=1.5), "erf_gelu", "constant 1.5 is not sqrt(2)")


def test_wrong_half():
    g = Graph()
    from .gelu_forms import half_product

    e = g.node("Erf", [g.node("Div", ["X", g.const(1.4142135)])], name="erf")
    y = half_product(g, "X", g.node("Add", [e, g.const(1.0)]), "x*p*0.5", half=0.6)
    assert_untouched(g.model({"X": [4, 16]}, [y]), "erf_gelu", "constant 0.6 is not exactly 0.5")


@pytest.mark.parametrize("one, half", [(1.0009, 0.5), (1.0, 0.5004), (0.9999999, 0.5)])
def test_the_exact_constants_take_no_tolerance(one, half):
    """0.5 and 1 are exact in every float type: 0.5 x (1.0009 + erf(x / sqrt 2))
    is no GELU (0.00045 |x| off: -0.027 at x = -60), unlike a rounded sqrt(2)."""
    from .gelu_forms import half_product

    g = Graph()
    e = g.node("Erf", [g.node("Div", ["X", g.const(1.4142135)])], name="erf")
    y = half_product(g, "X", g.node("Add", [e, g.const(one)]), "x*p*0.5", half=half)
    wrong = one if one != 1.0 else half
    assert_untouched(g.model({"X": [4, 16]}, [y]), "erf_gelu", f"constant {str(np.float32(wrong))} is not exactly")


def test_extra_consumer_of_an_intermediate():
    g = Graph()
    y = erf_gelu(g, "X")
    m = g.model({"X": [4, 16]}, [y, "erf_out"])  # the Erf's output is also a graph output
    assert_untouched(m, "erf_gelu", "intermediate erf_out has other consumers")
    g2 = Graph()
    y = erf_gelu(g2, "X")
    z = g2.node("Neg", ["erf_out"], name="neg")  # ... or read by another node
    assert_untouched(g2.model({"X": [4, 16]}, [y, z]), "erf_gelu", "intermediate erf_out has other consumers")


def test_double():
    assert_untouched(model(F64), "erf_gelu", "element type double is not supported")


def test_skip_any_node_of_the_pattern():
    out, report = rewrite_model(model(), skip_nodes=frozenset({"erf"}))
    assert decision(report, "erf_gelu").reason == "skipped by --skip-nodes"
    assert "Erf" in [n.op_type for n in out.graph.node]


@pytest.mark.parametrize("shape, replaced", [((1,), False), ((), True)])
def test_a_rank_0_x_takes_only_0_d_constants(shape, replaced):
    # x of shape [] / [sqrt2] is [1]: a Gelu of x would be rank 0.
    g = Graph()
    s = g.node("Div", ["X", g.const(np.full(shape, 1.4142135))])
    e = g.node("Erf", [s], name="erf")
    y = g.node("Mul", [g.node("Mul", ["X", g.node("Add", [e, g.const(np.full(shape, 1.0))])]), g.const(0.5)])
    model = g.model({"X": []}, {y: list(shape)})
    if replaced:
        check_rewrite(model, ["com.quake.Gelu"], {"X": np.array(0.7, np.float32)}, atol=GELU_ERF_ATOL)
    else:
        assert_untouched(model, "erf_gelu", "Erf input is not x / sqrt(2)")


def test_constant_that_raises_the_rank_is_not_a_scalar():
    # x / [[[sqrt2]]] is [1, 4, 16]: replacing it by a Gelu of x would drop the new axis.
    g = Graph()
    s = g.node("Div", ["X", g.const(np.full((1, 1, 1), 1.4142135))])
    e = g.node("Erf", [s], name="erf")
    y = g.node("Mul", [g.node("Mul", ["X", g.node("Add", [e, g.const(1.0)])]), g.const(0.5)])
    assert_untouched(g.model({"X": [4, 16]}, {y: [1, 4, 16]}), "erf_gelu", "Erf input is not x / sqrt(2)")
