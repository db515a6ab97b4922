"""rewrite_model's `select` (what `quake-onnx tune` builds its variants with):
only the named (rule, anchor) pairs are replaced, each at its own order, a Softmax with
the attributes its Pick gives; every other candidate is kept, whatever rule
would take it."""

from onnx import helper

from quake_onnx.rewrite import rewrite_model
from quake_onnx.rewrite.context import Pick
from quake_onnx.rewrite.engine import NOT_SELECTED

from .builders import Graph


def model():
    g = Graph()
    s = g.node("Sigmoid", ["X"], name="sig")
    h = g.node("Mul", ["X", s], name="silu")  # x * Sigmoid(x): a SiLU, anchored at the Sigmoid
    a = g.node("Softmax", [h], name="sm_a", axis=-1)
    b = g.node("Softmax", [a], name="sm_b", axis=-1)
    return g.model({"X": [4, 64]}, [b])


def quake_nodes(m) -> dict:
    return {
        n.name: (n.op_type, {a.name: helper.get_attribute_value(a) for a in n.attribute})
        for n in m.graph.node
        if n.domain == "com.quake"
    }


def test_only_the_selected_anchors_at_their_orders():
    out, report = rewrite_model(model(), select={("silu", "sig"): Pick(1), ("softmax", "sm_b"): Pick(3)})
    nodes = quake_nodes(out)
    assert {name.split("/")[0]: (op, attrs["order"]) for name, (op, attrs) in nodes.items()} == {
        "sig": ("Silu", 1),
        "sm_b": ("Softmax", 3),
    }
    kept = {d.node: d.reason for d in report.decisions if not d.replaced}
    assert kept == {"sm_a": NOT_SELECTED}
    # the Sigmoid left alone: not selected for the silu rule, nor for the sigmoid rule
    out, report = rewrite_model(model(), select={("softmax", "sm_a"): Pick(2)})
    assert [(d.rule, d.reason) for d in report.decisions if d.node == "sig"] == [
        ("silu", NOT_SELECTED),
        ("sigmoid", NOT_SELECTED),
    ]
    assert [n.op_type for n in out.graph.node if n.domain == ""] == ["Sigmoid", "Mul", "Softmax"]


def test_softmax_attributes_of_a_pick():
    exaq = (("method", "exaq"), ("bits", 3), ("clip", 0.0))
    out, _ = rewrite_model(
        model(),
        select={("silu", "sig"): Pick(2, exaq), ("softmax", "sm_a"): Pick(1, exaq), ("softmax", "sm_b"): Pick(2)},
    )
    nodes = {name.split("/")[0]: attrs for name, (op, attrs) in quake_nodes(out).items()}
    assert nodes["sm_a"] == {"axis": -1, "order": 1, "method": b"exaq", "bits": 3, "clip": 0.0}
    assert "method" not in nodes["sm_b"] and "method" not in nodes["sig"]


def test_no_select_is_optimize():
    a, _ = rewrite_model(model(), order=2)
    b, _ = rewrite_model(
        model(), select={("silu", "sig"): Pick(2), ("softmax", "sm_a"): Pick(2), ("softmax", "sm_b"): Pick(2)}
    )
    assert a.SerializeToString() == b.SerializeToString()


def test_one_anchor_of_two_rules_is_picked_per_rule():
    """x * Sigmoid(x) with the Sigmoid's output also a graph output: the silu
    rule and the sigmoid rule both anchor at the Sigmoid. tune picked the silu
    group and kept the sigmoid group, and the Sigmoid was replaced as well
    (picks were by anchor name alone)."""
    g = Graph()
    s = g.node("Sigmoid", ["X"], name="sig")
    h = g.node("Mul", ["X", s], name="silu")
    m = g.model({"X": [4, 64]}, [h, s])
    full, report = rewrite_model(m)
    assert sorted(d.rule for d in report.decisions if d.replaced) == ["sigmoid", "silu"]
    assert sorted(op for op, _ in quake_nodes(full).values()) == ["Sigmoid", "Silu"]
    for rule, op, plain in (("silu", "Silu", "Sigmoid"), ("sigmoid", "Sigmoid", "Mul")):
        out, _ = rewrite_model(m, select={(rule, "sig"): Pick(1)})
        assert [op for op, _ in quake_nodes(out).values()] == [op]
        assert [n.op_type for n in out.graph.node if n.domain == ""] == [plain]
