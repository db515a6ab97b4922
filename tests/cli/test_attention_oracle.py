"""optimize consults ONNX Runtime's fused graph and keeps the Softmax ORT
folds into a fused attention kernel; everything else is rewritten on the
original (standard ONNX plus com.quake)."""

from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import quake_onnx

oracle_module = sys.modules["quake_onnx.pipeline.oracle"]


def _model(name_softmax: bool = True) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Softmax", ["S"], ["P"], name="attn_softmax" if name_softmax else "", axis=-1),
        helper.make_node("MatMul", ["P", "S"], ["C"], name="context"),
        helper.make_node("Gelu", ["C"], ["Y"], name="act"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("S", TensorProto.FLOAT, [1, 4, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _fake_ort(model_has_attention: bool):
    """What ORT would hand back: the Softmax gone into com.microsoft.Attention (or not)."""

    def fuse(model, src, work, external, level, libraries):
        fused = onnx.ModelProto()
        fused.CopyFrom(model)
        if model_has_attention:
            del fused.graph.node[0:2]
            fused.graph.node.insert(
                0, helper.make_node("Attention", ["S"], ["C"], name="Attention_0", domain="com.microsoft")
            )
        return fused

    return fuse


def test_softmax_folded_into_attention_is_kept(monkeypatch):
    monkeypatch.setattr(oracle_module, "ort_optimized", _fake_ort(True))
    original = _model()
    out, report = quake_onnx.optimize(original, min_elements=0)
    assert [f"{n.domain}.{n.op_type}".lstrip(".") for n in out.graph.node] == ["Softmax", "MatMul", "com.quake.Gelu"]
    (softmax,) = [d for d in report.decisions if d.node == "attn_softmax"]
    assert not softmax.replaced and softmax.reason == "kept: ONNX Runtime fuses it into com.microsoft.Attention"
    assert original.SerializeToString() == _model().SerializeToString()  # the caller's model is untouched


def test_unnamed_softmax_is_named_on_a_copy(monkeypatch):
    monkeypatch.setattr(oracle_module, "ort_optimized", _fake_ort(True))
    original = _model(name_softmax=False)
    out, report = quake_onnx.optimize(original, min_elements=0)
    assert out.graph.node[0].op_type == "Softmax" and out.graph.node[0].name
    assert original.graph.node[0].name == ""  # the caller's model is untouched


def test_without_attention_the_softmax_is_replaced(monkeypatch):
    monkeypatch.setattr(oracle_module, "ort_optimized", _fake_ort(False))
    out, _ = quake_onnx.optimize(_model(), min_elements=0)
    assert [n.op_type for n in out.graph.node] == ["Softmax", "MatMul", "Gelu"]
    assert [n.domain for n in out.graph.node] == ["com.quake", "", "com.quake"]


def test_result_is_the_original_rewritten_not_ort_graph():
    # The real ORT pass: the output holds no com.microsoft op, only what the
    # original had plus com.quake nodes.
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["X", "w"], ["M"]),
        helper.make_node("Add", ["M", "b"], ["A"]),
        helper.make_node("Sigmoid", ["A"], ["G"]),
        helper.make_node("Mul", ["A", "G"], ["Y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 8])],
        initializer=[w, b],
    )
    out, report = quake_onnx.optimize(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), min_elements=0
    )
    assert {n.domain for n in out.graph.node} <= {"", "com.quake"}
    assert [n.op_type for n in out.graph.node] == ["MatMul", "Add", "Silu"]
