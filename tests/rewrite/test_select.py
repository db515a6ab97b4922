"""rewrite_model's `select` (what `quake-onnx tune` builds its variants with):
only the named anchors are replaced, each at its own order, a Softmax with
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
    out, report = rewrite_model(model(), select={"sig": Pick(1), "sm_b": Pick(3)})
    nodes = quake_nodes(out)
    assert {name.split("/")[0]: (op, attrs["order"]) for name, (op, attrs) in nodes.items()} == {
        "sig": ("Silu", 1),
        "sm_b": ("Softmax", 3),
    }
    kept = {d.node: d.reason for d in report.decisions if not d.replaced}
    assert kept == {"sm_a": NOT_SELECTED}
    # the Sigmoid left alone is no candidate for the sigmoid rule either: one decision per anchor
    out, report = rewrite_model(model(), select={"sm_a": Pick(2)})
    assert [d.node for d in report.decisions if d.node == "sig"] == ["sig"]
    assert [n.op_type for n in out.graph.node if n.domain == ""] == ["Sigmoid", "Mul", "Softmax"]


def test_softmax_attributes_of_a_pick():
    exaq = (("method", "exaq"), ("bits", 3), ("clip", 0.0))
    out, _ = rewrite_model(model(), select={"sig": Pick(2, exaq), "sm_a": Pick(1, exaq), "sm_b": Pick(2)})
    nodes = {name.split("/")[0]: attrs for name, (op, attrs) in quake_nodes(out).items()}
    assert nodes["sm_a"] == {"axis": -1, "order": 1, "method": b"exaq", "bits": 3, "clip": 0.0}
    assert "method" not in nodes["sm_b"] and "method" not in nodes["sig"]


def test_no_select_is_optimize():
    a, _ = rewrite_model(model(), order=2)
    b, _ = rewrite_model(model(), select={"sig": Pick(2), "sm_a": Pick(2), "sm_b": Pick(2)})
    assert a.SerializeToString() == b.SerializeToString()
