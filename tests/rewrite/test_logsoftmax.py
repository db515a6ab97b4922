import pytest

from .builders import F64, Graph, assert_untouched, check_rewrite, sample

# ops.md states no LogSoftmax budget; x - max - log(sum) inherits the sum's relative error
# (<= 0.2 % at order 2) as an absolute one: log(1.002) ~ 2e-3.
LOGSOFTMAX_ATOL = 2.5e-3


def model(shape, opset, dtype=None, **attrs):
    g = Graph(dtype) if dtype else Graph()
    y = g.node("LogSoftmax", ["X"], name="lsm", **attrs)
    return g.model({"X": shape}, [y], opset=opset)


@pytest.mark.parametrize("opset", [13, 20])
def test_direct(opset):
    check_rewrite(model([3, 7], opset), ["com.quake.LogSoftmax"], {"X": sample((3, 7))}, atol=LOGSOFTMAX_ATOL)


def test_opset11_inner_axis_is_flattened():
    check_rewrite(
        model([2, 3, 4], 11, axis=1),
        ["Flatten", "com.quake.LogSoftmax", "Reshape"],
        {"X": sample((2, 3, 4))},
        atol=LOGSOFTMAX_ATOL,
    )


def test_not_selected_is_reported():
    report = assert_untouched(model([3, 7], 13), "logsoftmax", "not among the selected ops", ops=frozenset({"softmax"}))
    assert not report.replaced


def test_double():
    assert_untouched(model([3, 7], 13, dtype=F64), "logsoftmax", "element type double")
