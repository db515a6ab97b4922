import pytest

from quake_onnx.rewrite import rewrite_model

from .builders import F64, SIGMOID_ATOL, Graph, assert_untouched, check_rewrite, decision, sample

X = {"X": sample((4, 32))}


def silu_model(swap=False, beta=None, beta_first=False, dtype=None):
    g = Graph(dtype) if dtype else Graph()
    a = "X"
    if beta is not None:
        b = g.const(beta, "beta")
        a = g.node("Mul", [b, "X"] if beta_first else ["X", b], name="scale")
    s = g.node("Sigmoid", [a], name="sig")
    y = g.node("Mul", [s, "X"] if swap else ["X", s], name="mul")
    return g.model({"X": [4, 32]}, [y])


def alpha(model):
    node = next(n for n in model.graph.node if n.op_type == "Silu")
    return next(a.f for a in node.attribute if a.name == "alpha")


@pytest.mark.parametrize("swap", [False, True])
def test_silu(swap):
    out, report = check_rewrite(silu_model(swap), ["com.quake.Silu"], X, atol=SIGMOID_ATOL)
    assert alpha(out) == 1.0
    d = decision(report, "silu")
    assert d.replaced and d.node == "sig"
    assert not [x for x in report.decisions if x.rule == "sigmoid"]  # the SiLU took its Sigmoid


@pytest.mark.parametrize("swap,beta_first", [(False, False), (True, True), (False, True)])
def test_swish(swap, beta_first):
    out, _ = check_rewrite(silu_model(swap, 1.702, beta_first), ["com.quake.Silu"], X, atol=SIGMOID_ATOL)
    assert alpha(out) == pytest.approx(1.702)


def test_shared_sigmoid_stays_for_its_other_consumer():
    g = Graph()
    s = g.node("Sigmoid", ["X"], name="sig")
    y = g.node("Mul", ["X", s], name="mul")
    z = g.node("Add", [s, g.const(1.0)], name="other")
    model = g.model({"X": [4, 32]}, [y, z])
    out, report = check_rewrite(model, ["com.quake.Sigmoid", "com.quake.Silu", "Add"], X, atol=SIGMOID_ATOL)
    assert decision(report, "silu").replaced and decision(report, "sigmoid").replaced
    out, _ = check_rewrite(model, ["Sigmoid", "com.quake.Silu", "Add"], X, atol=SIGMOID_ATOL, ops=frozenset({"silu"}))


def test_swish_with_negative_beta_is_refused():
    model = silu_model(beta=-1.0)
    assert_untouched(model, "silu", "Swish beta -1 is not > 0", ops=frozenset({"silu"}))
    # The Sigmoid itself is still a sigmoid.
    out, report = rewrite_model(model)
    assert [n.op_type for n in out.graph.node] == ["Mul", "Sigmoid", "Mul"]
    assert not decision(report, "silu").replaced and decision(report, "sigmoid").replaced


def test_sigmoid_of_something_else_is_not_a_silu():
    g = Graph()
    s = g.node("Sigmoid", ["X"], name="sig")
    y = g.node("Mul", ["Y", s], name="mul")  # gates Y, not X
    model = g.model({"X": [4, 32], "Y": [4, 32]}, [y])
    _, report = rewrite_model(model, ops=frozenset({"silu"}))
    assert not [d for d in report.decisions if d.rule == "silu"]


def test_double():
    assert_untouched(silu_model(dtype=F64), "silu", "element type double is not supported")


@pytest.mark.parametrize("skipped", ["sig", "mul"])
def test_skipping_either_node_keeps_the_silu(skipped):
    # The Sigmoid is only pruned by the SiLU rule, but a skipped node stays whatever the rule.
    out, report = rewrite_model(silu_model(), skip_nodes=frozenset({skipped}))
    assert [n.op_type for n in out.graph.node] == ["Sigmoid", "Mul"]
    assert decision(report, "silu").reason == "skipped by --skip-nodes"
