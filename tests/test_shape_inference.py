"""The library tells ORT that Y has X's shape (so ORT's shape-dependent fusions
still apply downstream of com.quake nodes)."""

import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import quake_onnx

OPS = ["Exp", "Sigmoid", "Silu", "Gelu", "Softmax", "LogSoftmax"]


def _shape_of_output_model(op, dtype, dims):
    nodes = [helper.make_node(op, ["X"], ["H"], domain="com.quake"), helper.make_node("Shape", ["H"], ["S"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", dtype, dims)],
        [helper.make_tensor_value_info("S", TensorProto.INT64, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.quake", 1)])


def _session(model):
    so = ort.SessionOptions()
    so.register_custom_ops_library(quake_onnx.get_library_path())
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
def test_static_shape_reaches_downstream_ops(op, dtype):
    # Shape's output has a static length only if ORT knows H's rank.
    assert _session(_shape_of_output_model(op, dtype, [2, 5, 8])).get_outputs()[0].shape == [3]


@pytest.mark.parametrize("op", OPS)
def test_symbolic_shape_is_left_to_the_model(op, capfd):
    # A named dimension must not reach ORT as a size: ORT would then warn at
    # every run that the real output does not match.
    graph = helper.make_graph(
        [helper.make_node(op, ["X"], ["Y"], domain="com.quake")],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.quake", 1)])
    import numpy as np

    session = _session(model)
    capfd.readouterr()
    session.run(None, {"X": np.zeros((3, 8), np.float32)})
    assert "does not match" not in capfd.readouterr().err


def test_static_shape_enables_skip_layernorm_fusion(tmp_path):
    import numpy as np
    from onnx import numpy_helper

    hidden = 16
    inits = [
        numpy_helper.from_array(np.ones(hidden, np.float32), "g"),
        numpy_helper.from_array(np.zeros(hidden, np.float32), "b"),
        numpy_helper.from_array(np.eye(hidden, dtype=np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Gelu", ["X"], ["A"], domain="com.quake"),
        helper.make_node("MatMul", ["A", "w"], ["M"]),
        helper.make_node("Add", ["M", "X"], ["S"]),
        helper.make_node("LayerNormalization", ["S", "g", "b"], ["Y"], axis=-1),
    ]
    io = [1, 4, hidden]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, io)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, io)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.quake", 1)])
    so = ort.SessionOptions()
    so.register_custom_ops_library(quake_onnx.get_library_path())
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    assert "SkipLayerNormalization" in [n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node]
