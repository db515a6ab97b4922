"""What the pass guarantees whatever the rule: the model around the replaced nodes stays as it was."""

import json

import pytest
from onnx import helper

from quake_onnx.rewrite import ALL_OPS, rewrite_model

from .builders import F32, SIGMOID_ATOL, Graph, check_rewrite, op_types, sample


def two_sigmoids():
    g = Graph()
    a = g.node("Sigmoid", ["X"], name="sig")
    b = g.node("Relu", [a], name="relu")
    y = g.node("Sigmoid", [b], name="", outputs=["unnamed_out"])  # ONNX allows unnamed nodes
    m = g.model({"X": [2, 5]}, [y])
    m.graph.value_info.append(helper.make_tensor_value_info("relu_out", F32, [2, 5]))
    return m


def decorated():
    m = two_sigmoids()
    m.doc_string, m.graph.doc_string = "model doc", "graph doc"
    m.producer_version, m.model_version, m.domain = "7.1", 3, "org.example"
    helper.set_model_props(m, {"source": "unit test"})
    m.graph.node[1].doc_string = "relu doc"
    m.graph.node[1].metadata_props.add(key="k", value="v")
    return m


def test_model_level_fields_survive():
    m = decorated()
    out, report = check_rewrite(
        m, ["com.quake.Sigmoid", "Relu", "com.quake.Sigmoid"], {"X": sample((2, 5))}, atol=SIGMOID_ATOL
    )
    for name in ("ir_version", "producer_name", "producer_version", "model_version", "domain", "doc_string"):
        assert getattr(out, name) == getattr(m, name), name
    assert out.metadata_props == m.metadata_props
    assert out.graph.doc_string == "graph doc"
    assert (
        out.graph.node[1].doc_string == "relu doc"
        and out.graph.node[1].metadata_props == m.graph.node[1].metadata_props
    )
    assert list(out.graph.value_info) == list(m.graph.value_info)
    assert out.graph.input == m.graph.input and out.graph.output == m.graph.output
    assert [(o.domain, o.version) for o in out.opset_import] == [("", 20), ("com.quake", 1)]


def test_new_names_derive_from_the_anchor_and_stay_unique():
    g = Graph()
    g.node("Relu", ["X"], name="sig/quake_Sigmoid")  # already takes the name the rewrite would choose
    y = g.node("Sigmoid", ["sig/quake_Sigmoid_out"], name="sig")
    out, _ = rewrite_model(g.model({"X": [2, 5]}, [y]))
    assert [n.name for n in out.graph.node] == ["sig/quake_Sigmoid", "sig/quake_Sigmoid_1"]
    out, _ = rewrite_model(two_sigmoids())
    assert [n.name for n in out.graph.node] == ["sig/quake_Sigmoid", "relu", "unnamed_out/quake_Sigmoid"]


def test_nothing_replaced_returns_the_model_unchanged():
    m = decorated()
    out, report = rewrite_model(m, ops=frozenset({"softmax"}))
    assert out.SerializeToString() == m.SerializeToString()
    assert out is not m
    assert not any(o.domain == "com.quake" for o in out.opset_import)
    assert [d.reason for d in report.decisions] == ["sigmoid is not among the selected ops"] * 2


def test_input_model_is_not_mutated():
    m = decorated()
    before = m.SerializeToString()
    rewrite_model(m)
    assert m.SerializeToString() == before


def test_order_on_every_new_node():
    out, _ = rewrite_model(two_sigmoids(), order=3)
    orders = [a.i for n in out.graph.node if n.domain == "com.quake" for a in n.attribute if a.name == "order"]
    assert orders == [3, 3]


def test_element_type_unknown():
    g = Graph()
    a = g.node("Mystery", ["X"], name="mystery", domain="org.example")  # shape inference cannot see through it
    y = g.node("Sigmoid", [a], name="sig")
    out, report = rewrite_model(g.model({"X": [2, 5]}, [y], extra_opsets=[("org.example", 1)]))
    assert op_types(out) == ["org.example.Mystery", "Sigmoid"]
    assert report.decisions[0].reason == "element type unknown"


@pytest.mark.parametrize("bad", [{"order": 4}, {"ops": frozenset({"tanh"})}])
def test_bad_options(bad):
    with pytest.raises(ValueError):
        rewrite_model(two_sigmoids(), **bad)


def test_report_serialises():
    _, report = rewrite_model(two_sigmoids(), skip_nodes=frozenset({"sig"}))
    data = json.loads(report.to_json())
    assert data["replaced"] == 1 and data["skipped"] == 1
    assert data["decisions"][0]["reason"] == "skipped by --skip-nodes"
    assert set(ALL_OPS) == {"attention", "glu", "softmax", "logsoftmax", "gelu", "silu", "sigmoid", "exp"}
