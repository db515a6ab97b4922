"""optimize leaves ops on small static tensors to ONNX Runtime: below the
measured break-even a custom-op call costs more than it saves."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

import quake_onnx
from quake_onnx.rewrite.engine import BREAK_EVEN
from quake_onnx.rewrite.passes import rewrite_model


def _model(op: str, shape) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node(op, ["X"], ["Y"], name="n")],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("op,family", [("Softmax", "softmax"), ("Sigmoid", "sigmoid"), ("Exp", "exp")])
def test_threshold_is_the_break_even(op, family):
    floor = BREAK_EVEN[family]
    below, report = quake_onnx.optimize(_model(op, [1, floor - 1]), ort_fusions=False)
    assert below.graph.node[0].domain == ""
    assert (
        report.decisions[0].reason == f"{floor - 1} elements: below the {floor}-element break-even of a custom-op call"
    )
    at, _ = quake_onnx.optimize(_model(op, [1, floor]), ort_fusions=False)
    assert at.graph.node[0].domain == "com.quake"


def test_symbolic_shapes_are_replaced():
    out, _ = quake_onnx.optimize(_model("Softmax", ["batch", 8]), ort_fusions=False)
    assert out.graph.node[0].domain == "com.quake"


def test_zero_and_uniform_floors():
    small = _model("Softmax", [2, 8])
    assert quake_onnx.optimize(small, ort_fusions=False, min_elements=0)[0].graph.node[0].domain == "com.quake"
    assert quake_onnx.optimize(small, ort_fusions=False, min_elements=17)[0].graph.node[0].domain == ""
    assert quake_onnx.optimize(small, ort_fusions=False, min_elements=16)[0].graph.node[0].domain == "com.quake"


def test_the_pass_itself_has_no_floor():
    out, _ = rewrite_model(_model("Softmax", [2, 8]))
    assert out.graph.node[0].domain == "com.quake"


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_floor_is_refused(bad):
    with pytest.raises(quake_onnx.optimize.__globals__["OptimizeError"], match="min_elements"):
        quake_onnx.optimize(_model("Softmax", [2, 8]), min_elements=bad)
