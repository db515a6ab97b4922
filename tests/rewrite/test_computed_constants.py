"""Constants computed in the graph (ONNX function bodies: CastLike, Sqrt, ...): recognised
by the matcher, removed with the pattern when nothing else reads them, kept when something does."""

import math

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from quake_onnx.rewrite import rewrite_model
from quake_onnx.rewrite.constants import MAX_DEPTH, computation, scalar, scalar_value

from .builders import (
    GELU_ERF_ATOL,
    SIGMOID_ATOL,
    Graph,
    assert_untouched,
    check_rewrite,
    decision,
    op_types,
    run,
    sample,
)

X = {"X": sample((4, 32))}


def constant(g: Graph, value, name: str) -> str:
    """A Constant node (not an initializer), as function bodies write them."""
    return g.node("Constant", [], name=name, value=helper.make_tensor(name, TensorProto.FLOAT, [], [value]))


def cast_like(g: Graph, value, name: str, like: str = "X") -> str:
    return g.node("CastLike", [constant(g, value, f"{name}_c"), like], name=name)


def erf_gelu_body(g: Graph, two: float = 2.0, sum_one: bool = True) -> str:
    """Erf GELU as ONNX's Gelu function body writes it: x / Sqrt(CastLike(2)), Sum(1, erf)."""
    sqrt2 = g.node("Sqrt", [cast_like(g, two, "two")], name="sqrt2")
    e = g.node("Erf", [g.node("Div", ["X", sqrt2], name="scale")], name="erf")
    p = g.node("Sum" if sum_one else "Add", [cast_like(g, 1.0, "one"), e], name="phi")
    return g.node("Mul", [g.node("Mul", [cast_like(g, 0.5, "half"), "X"], name="halfx"), p], name="y")


def swish_body(g: Graph, alpha: float, cast: str = "CastLike") -> str:
    """x * Sigmoid(CastLike(alpha, x) * x) (Swish's function body); Cast(alpha) as ORT inlines it."""
    if cast == "CastLike":
        a = cast_like(g, alpha, "alpha")
    else:
        a = g.node("Cast", [constant(g, alpha, "alpha_c")], name="alpha", to=TensorProto.FLOAT)
    s = g.node("Sigmoid", [g.node("Mul", [a, "X"], name="scale")], name="sig")
    return g.node("Mul", ["X", s], name="mul")


def silu_alpha(model):
    node = next(n for n in model.graph.node if n.op_type == "Silu")
    return helper.get_attribute_value(next(a for a in node.attribute if a.name == "alpha"))


# --- the evaluation --------------------------------------------------------------------------


def graph_of(build, inputs=None) -> gs.Graph:
    g = Graph()
    out = build(g)
    return gs.import_onnx(g.model(inputs or {"X": [4, 32]}, {out: None}))


def tensor(graph: gs.Graph, name: str) -> gs.Tensor:
    return graph.tensors()[name]


@pytest.mark.parametrize(
    "build,value,ndim",
    [
        (lambda g: g.node("Sqrt", [cast_like(g, 2.0, "t")], name="v"), math.sqrt(2), 0),
        (lambda g: g.node("Reciprocal", [g.node("Sqrt", [g.const(2.0)])], name="v"), 1 / math.sqrt(2), 0),
        (lambda g: g.node("Div", [g.const(1.0), g.node("Neg", [g.const(-2.0)])], name="v"), 0.5, 0),
        (
            lambda g: g.node(
                "Sub", [g.node("Mul", [g.const(3.0), g.const(0.5)]), g.node("Identity", [g.const(0.25)])], name="v"
            ),
            1.25,
            0,
        ),
        (lambda g: g.node("Add", [g.const(1.0), g.const(2.0)], name="v"), 3.0, 0),
        # ONNX computes integer Div in integers: Cast(7 -> int) / 2 is 3.
        (
            lambda g: g.node(
                "Div", [g.node("Cast", [g.const(7.9)], to=TensorProto.INT64), g.const(2, dtype=np.int64)], name="v"
            ),
            3.0,
            0,
        ),
        (lambda g: g.node("Unsqueeze", [g.const(2.0), g.const([0, 1], dtype=np.int64)], name="v"), 2.0, 2),
        (lambda g: g.node("Reshape", [g.const([2.0]), g.const([1, 1, 1], dtype=np.int64)], name="v"), 2.0, 3),
        (lambda g: g.node("Squeeze", [g.const([[2.0]])], name="v"), 2.0, 0),
    ],
    ids=[
        "sqrt-castlike",
        "reciprocal",
        "div-neg",
        "sub-mul-identity",
        "add",
        "int-div",
        "unsqueeze",
        "reshape",
        "squeeze",
    ],
)
def test_evaluates(build, value, ndim):
    graph = graph_of(build)
    got = scalar_value(tensor(graph, "v_out"))
    assert got is not None and got.ndim == ndim
    assert float(got.reshape(())) == pytest.approx(value, rel=1e-7)


@pytest.mark.parametrize(
    "build",
    [
        lambda g: g.node("Mul", ["X", g.const(2.0)], name="v"),  # reads data
        lambda g: g.node("Sqrt", [g.const(-1.0)], name="v"),  # nan
        lambda g: g.node("Div", [g.const(1.0), g.const(0.0)], name="v"),  # inf
        lambda g: g.node("Sqrt", [g.const([1.0, 4.0])], name="v"),  # two elements
        lambda g: g.node("Exp", [g.const(1.0)], name="v"),  # not one of the small pure ops
        lambda g: g.node("Cast", [g.const(1.0)], name="v", to=TensorProto.BOOL),
    ],
    ids=["data", "nan", "inf", "vector", "exp", "bool"],
)
def test_not_a_constant_scalar(build):
    assert computation(tensor(graph_of(build), "v_out")) is None


def test_depth_limit():
    def chain(n):
        def build(g):
            t = g.const(2.0)
            for i in range(n):
                t = g.node("Identity", [t], name="v" if i == n - 1 else None)
            return t

        return build

    assert scalar(tensor(graph_of(chain(MAX_DEPTH)), "v_out")) == 2.0
    assert scalar(tensor(graph_of(chain(MAX_DEPTH + 1)), "v_out")) is None


def test_computation_names_its_nodes():
    graph = graph_of(lambda g: g.node("Sqrt", [cast_like(g, 2.0, "t")], name="v"))
    value, nodes = computation(tensor(graph, "v_out"))
    assert sorted(n.name for n in nodes) == ["t", "t_c", "v"]


# --- in the rules ----------------------------------------------------------------------------


@pytest.mark.parametrize("sum_one", [True, False])
def test_erf_gelu_function_body(sum_one):
    g = Graph()
    model = g.model({"X": [4, 32]}, [erf_gelu_body(g, sum_one=sum_one)])
    out, report = check_rewrite(model, ["com.quake.Gelu"], X, atol=GELU_ERF_ATOL)
    assert decision(report, "erf_gelu").replaced
    assert not out.graph.initializer  # the constants went with the pattern


def test_erf_gelu_wrong_computed_constant():
    g = Graph()
    model = g.model({"X": [4, 32]}, [erf_gelu_body(g, two=1.5)])
    assert_untouched(model, "erf_gelu", "constant 1.224745 is not sqrt(2) (1.414214) within 0.001 relative")


@pytest.mark.parametrize("cast", ["CastLike", "Cast"])
@pytest.mark.parametrize("alpha", [1.0, 1.702])
def test_swish_function_body(cast, alpha):
    g = Graph()
    model = g.model({"X": [4, 32]}, [swish_body(g, alpha, cast)])
    out, report = check_rewrite(model, ["com.quake.Silu"], X, atol=SIGMOID_ATOL)
    assert silu_alpha(out) == pytest.approx(alpha)
    assert decision(report, "silu").replaced


def test_swish_body_with_negative_computed_alpha():
    g = Graph()
    model = g.model({"X": [4, 32]}, [swish_body(g, -1.0)])
    assert_untouched(model, "silu", "Swish beta -1 is not > 0", ops=frozenset({"silu"}))


def test_shared_constant_producer_stays():
    """sqrt(2) = Sqrt(CastLike(2)) also scales Y: the GELU goes, the constant's nodes stay for Y."""
    g = Graph()
    y = erf_gelu_body(g)
    z = g.node("Mul", ["Y", "sqrt2_out"], name="other")
    model = g.model({"X": [4, 32], "Y": [4, 32]}, [y, z])
    feeds = {**X, "Y": sample((4, 32), seed=1)}
    out, report = check_rewrite(
        model, ["Constant", "CastLike", "Sqrt", "com.quake.Gelu", "Mul"], feeds, atol=GELU_ERF_ATOL
    )
    assert decision(report, "erf_gelu").replaced
    (other,) = [n for n in out.graph.node if n.name == "other"]
    assert list(other.input) == ["Y", "sqrt2_out"]
    np.testing.assert_allclose(run(out, feeds)[1], feeds["Y"] * np.float32(math.sqrt(2)), rtol=1e-6)


def test_constant_partly_shared():
    """The Constant under CastLike(2) is also read by another node: Sqrt and CastLike go, it stays."""
    g = Graph()
    y = erf_gelu_body(g)
    z = g.node("Add", ["Y", "two_c_out"], name="other")
    model = g.model({"X": [4, 32], "Y": [4, 32]}, [y, z])
    feeds = {**X, "Y": sample((4, 32), seed=1)}
    check_rewrite(model, ["Constant", "com.quake.Gelu", "Add"], feeds, atol=GELU_ERF_ATOL)


def test_constant_producer_in_skip_nodes_stays():
    g = Graph()
    model = g.model({"X": [4, 32]}, [erf_gelu_body(g)])
    out, report = rewrite_model(model, skip_nodes=frozenset({"sqrt2"}))
    assert decision(report, "erf_gelu").replaced
    assert "Sqrt" in op_types(out) and "com.quake.Gelu" in op_types(out)


def test_constant_raising_the_rank_is_not_a_scalar_operand():
    """Reshape(alpha, [1, 1, 1]) * X[4, 32] broadcasts X up to rank 3: not x * Sigmoid(alpha x)."""
    g = Graph()
    a = g.node("Reshape", [cast_like(g, 1.702, "alpha"), g.const([1, 1, 1], "shape", dtype=np.int64)], name="r")
    s = g.node("Sigmoid", [g.node("Mul", [a, "X"], name="scale")], name="sig")
    y = g.node("Mul", ["X", s], name="mul")
    model = g.model({"X": [4, 32]}, {y: [1, 4, 32]})
    out, report = rewrite_model(model)
    assert not [d for d in report.decisions if d.rule == "silu"]
    assert "com.quake.Silu" not in op_types(out)


def test_constant_keeping_the_rank_is():
    g = Graph()
    a = g.node("Unsqueeze", [cast_like(g, 1.702, "alpha"), g.const([0, 1], "axes", dtype=np.int64)], name="u")
    s = g.node("Sigmoid", [g.node("Mul", ["X", a], name="scale")], name="sig")
    y = g.node("Mul", [s, "X"], name="mul")
    out, _ = check_rewrite(g.model({"X": [4, 32]}, [y]), ["com.quake.Silu"], X, atol=SIGMOID_ATOL)
    assert silu_alpha(out) == pytest.approx(1.702)


def test_half_as_computed_reciprocal():
    """0.5 written as Reciprocal(CastLike(2)) in the final product."""
    g = Graph()
    e = g.node("Erf", [g.node("Mul", ["X", g.const(1 / math.sqrt(2))])], name="erf")
    p = g.node("Add", [e, g.const(1.0)])
    half = g.node("Reciprocal", [cast_like(g, 2.0, "two")], name="half")
    y = g.node("Mul", [g.node("Mul", ["X", p]), half])
    check_rewrite(g.model({"X": [4, 32]}, [y]), ["com.quake.Gelu"], X, atol=GELU_ERF_ATOL)
