import numpy as np
import pytest
from onnx import TensorProto, helper

from .builders import F16, F32, F64, SOFTMAX_ATOL, Graph, assert_untouched, check_rewrite, decision, run, sample


def softmax_model(shape, opset, dtype=F32, **attrs):
    g = Graph(dtype)
    y = g.node("Softmax", ["X"], name="sm", **attrs)
    return g.model({"X": shape}, [y], opset=opset)


def unknown_rank_model(opset, axis):
    # A Reshape to a shape known only at run time hides the rank from shape inference
    # (graph inputs themselves must have a rank to pass the checker).
    g = Graph()
    r = g.node("Reshape", ["X", "S"], name="reshape")
    y = g.node("Softmax", [r], name="sm", axis=axis)
    return g.model({"X": [2, 3, 4], "S": (["R"], TensorProto.INT64)}, {y: ["a", "b", "c"]}, opset=opset)


def quake_attrs(model, op="Softmax"):
    node = next(n for n in model.graph.node if n.op_type == op and n.domain == "com.quake")
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("axis", [None, -1, 1, 0])
def test_opset13_axis_maps_directly(axis):
    attrs = {} if axis is None else {"axis": axis}
    model = softmax_model([3, 4, 5], 13, **attrs)
    x = sample((3, 4, 5))
    out, report = check_rewrite(model, ["com.quake.Softmax"], {"X": x}, atol=SOFTMAX_ATOL)
    assert quake_attrs(out) == {"axis": -1 if axis is None else axis, "order": 2}
    assert decision(report, "softmax").replaced
    assert np.allclose(run(out, {"X": x})[0].sum(axis=-1 if axis is None else axis), 1, atol=1e-5)


@pytest.mark.parametrize(
    "shape,axis,quake_axis", [([3, 4, 5], -1, -1), ([3, 4, 5], 2, -1), ([6, 5], None, -1), ([3, 4, 1, 1], 1, 1)]
)
def test_opset11_equivalent_axis_is_direct(shape, axis, quake_axis):
    attrs = {} if axis is None else {"axis": axis}
    model = softmax_model(shape, 11, **attrs)
    out, _ = check_rewrite(model, ["com.quake.Softmax"], {"X": sample(shape)}, atol=SOFTMAX_ATOL)
    assert quake_attrs(out)["axis"] == quake_axis


def test_opset11_inner_axis_is_flattened_with_static_shape():
    model = softmax_model([2, 3, 4, 5], 11, axis=1)  # normalises over 3*4*5 values at once
    x = sample((2, 3, 4, 5))
    out, report = check_rewrite(model, ["Flatten", "com.quake.Softmax", "Reshape"], {"X": x}, atol=SOFTMAX_ATOL)
    assert np.allclose(run(out, {"X": x})[0].sum(axis=(1, 2, 3)), 1, atol=1e-5)
    assert "Flatten(axis=1)" in decision(report, "softmax").reason


def test_opset11_inner_axis_with_symbolic_dims_reads_the_shape_at_run_time():
    model = softmax_model(["N", 3, "K"], 11, axis=1)
    check_rewrite(
        model, ["Flatten", "com.quake.Softmax", "Shape", "Reshape"], {"X": sample((2, 3, 4))}, atol=SOFTMAX_ATOL
    )


@pytest.mark.parametrize("shape", [[3, 4, 0], [2, 3, 0, 5], [0, 3, 4]])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_opset11_inner_axis_of_an_empty_static_shape_is_one_op(shape, op):
    # Flatten -> Reshape(shape) failed to load: before opset 14 a 0 in Reshape's
    # target copies a dim the 2-D tensor lacks from index 2 on. Empty is empty.
    g = Graph()
    y = g.node(op, ["X"], name="sm", axis=1)
    model = g.model({"X": shape}, [y], opset=11)
    out, _ = check_rewrite(model, [f"com.quake.{op}"], {"X": sample(tuple(shape))}, atol=SOFTMAX_ATOL)
    assert run(out, {"X": sample(tuple(shape))})[0].shape == tuple(shape)


@pytest.mark.parametrize("axis", [1, -2])
def test_opset11_unknown_rank_flattens(axis):
    model = unknown_rank_model(11, axis)
    feeds = {"X": sample((2, 3, 4)), "S": np.array([2, 3, 4], np.int64)}
    check_rewrite(model, ["Reshape", "Flatten", "com.quake.Softmax", "Shape", "Reshape"], feeds, atol=SOFTMAX_ATOL)


def test_negative_axis_of_unknown_rank_before_opset11_is_left_with_reason():
    assert_untouched(unknown_rank_model(9, -2), "softmax", "no Flatten with a negative axis")


def test_float16():
    model = softmax_model([4, 16], 13, dtype=F16)
    # + half-precision rounding of the result (values up to 1: 2^-11)
    check_rewrite(model, ["com.quake.Softmax"], {"X": sample((4, 16), np.float16)}, atol=SOFTMAX_ATOL + 5e-4)


def test_double_is_not_supported():
    assert_untouched(softmax_model([4, 16], 13, dtype=F64), "softmax", "element type double is not supported")


def test_order_is_set_on_the_new_node():
    out, _ = check_rewrite(
        softmax_model([2, 8], 13), ["com.quake.Softmax"], {"X": sample((2, 8))}, atol=SOFTMAX_ATOL * 15, order=1
    )
    assert quake_attrs(out)["order"] == 1
