"""An input model ONNX Runtime itself refuses is bad input: exit 2, one
`error:` line that carries ORT's reason, and none of ORT's own log lines
(`[E:onnxruntime:...]`), which the sessions the tool opens must not print.
Run in real processes: ORT writes its log to the C++ stderr, which only a
process of its own shows."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from clitools import assert_one_line_error_real, run_real
from onnx import TensorProto, helper


def _model(nodes, inputs, extra_opsets=(), inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], list(inits)
    )
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in extra_opsets]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


X = helper.make_tensor_value_info("X", TensorProto.FLOAT, [32, 64])
REFUSED = {
    # Softmax's axis out of range for the rank: ORT's shape inference says so.
    "axis": (_model([helper.make_node("Softmax", ["X"], ["Y"], axis=5)], [X]), "axis"),
    # A type mismatch ONNX's checker would catch, ORT's loader does.
    "types": (
        _model(
            [helper.make_node("Add", ["X", "I"], ["s"]), helper.make_node("Softmax", ["s"], ["Y"])],
            [X, helper.make_tensor_value_info("I", TensorProto.INT64, [32, 64])],
        ),
        "type",
    ),
    # An op of no library ONNX Runtime has.
    "domain": (
        _model(
            [
                helper.make_node("Frobnicate", ["X"], ["f"], domain="no.such.domain"),
                helper.make_node("Softmax", ["f"], ["Y"]),
            ],
            [X],
            ["no.such.domain"],
        ),
        "Frobnicate",
    ),
    # An op name the default domain does not have.
    "op": (_model([helper.make_node("Softmaxx", ["X"], ["Y"])], [X]), "Softmaxx"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
@pytest.mark.parametrize("command", ["optimize", "optimize-no-fusions", "inspect", "check"])
def test_model_ort_refuses_is_bad_input(tmp_path, case, command):
    model, words = REFUSED[case]
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(src))
    args = {
        "optimize": ["optimize", src, out],
        "optimize-no-fusions": ["optimize", src, out, "--no-ort-fusions"],
        "inspect": ["inspect", src],
        "check": ["check", src],
    }[command]
    proc = run_real(*args)
    prefix = "ONNX Runtime cannot load" if command == "check" else "the input model does not load in ONNX Runtime"
    line = assert_one_line_error_real(proc, 2, prefix)
    assert words.lower() in line.lower()
    assert "[E:onnxruntime" not in proc.stdout + proc.stderr
    assert not out.exists()


def test_calibrate_of_a_refused_model(tmp_path):
    # An exaq Softmax behind an op no library has.
    nodes = [
        helper.make_node("Frobnicate", ["X"], ["f"], domain="no.such.domain"),
        helper.make_node("Softmax", ["f"], ["Y"], domain="com.quake", method="exaq", bits=3, order=2),
    ]
    model = _model(nodes, [X], ["no.such.domain", "com.quake"])
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(src))
    np.savez(tmp_path / "x.npz", X=np.zeros((32, 64), np.float32))
    proc = run_real("calibrate", src, out, "--inputs", tmp_path / "x.npz")
    line = assert_one_line_error_real(proc, 2, "the input model does not load in ONNX Runtime")
    assert "Frobnicate" in line and "[E:onnxruntime" not in proc.stderr
    assert not out.exists()


def test_zoo_reports_a_refused_model_without_ort_log_lines(tmp_path):
    for case, (model, _) in REFUSED.items():
        onnx.save(model, str(tmp_path / f"{case}.onnx"))
    proc = run_real("zoo", tmp_path, "--runs", "1", "--warmup", "0")
    assert proc.returncode == 1, proc.stderr
    assert "[E:onnxruntime" not in proc.stdout + proc.stderr
    assert proc.stdout.count("error") >= len(REFUSED)
