"""An input model ONNX Runtime itself refuses is bad input: exit 2, one
`error:` line that carries ORT's reason, and none of ORT's own log lines
(`[E:onnxruntime:...]`), which the sessions the tool opens must not print.
Run in real processes: ORT writes its log to the C++ stderr, which only a
process of its own shows."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from clitools import assert_one_line_error, assert_one_line_error_real, cli, run_real
from onnx import TensorProto, helper

from quake_onnx.sessions import one_line


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


@pytest.mark.parametrize("command", ["optimize", "inspect", "tune"])
def test_onnx_runtime_source_places_are_left_out(tmp_path, command):
    # ORT puts "/path/model.cc:256 onnxruntime::Model::Model(onnx::ModelProto&&, ...)"
    # before its reason: the line keeps the reason only.
    model = _model([helper.make_node("Softmax", ["X"], ["Y"])], [X])
    model.ir_version = 99
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(src))
    args = [src] if command == "inspect" else [src, out]
    line = assert_one_line_error(cli(command, *args), 2, "the input model does not load in ONNX Runtime")
    assert "failed: Unsupported model IR version: 99, max supported IR version: " in line
    assert "onnxruntime::" not in line and ".cc:" not in line


@pytest.mark.parametrize(
    "text",
    [
        "no place at all: the reason",
        "Load model from m.onnx failed:/src/model.cc:12 not_a_signature (x) reason",  # no qualified name
        "Load model from m.onnx failed:/src/model.cc:12 ns::f(unclosed reason",
        "Load model from m.onnx failed:/src/model.cc:12 ns::f(int)",  # nothing after it: keep the place
    ],
)
def test_one_line_keeps_what_is_not_a_source_place(text):
    assert one_line(RuntimeError(text)) == text
    assert one_line(RuntimeError(text + "\n  second line\n")) == text + "; second line"


def test_one_line_leaves_out_a_source_place():
    text = (
        "[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:/onnxruntime_src/onnxruntime/core/graph/"
        "model_load_utils.h:46 void onnxruntime::model_load_utils::ValidateOpsetForDomain(const std::unordered_map"
        "<std::__cxx11::basic_string<char>, int>&, const onnxruntime::logging::Logger&, bool, const std::string&, "
        "int) ONNX Runtime only *guarantees* support for models stamped with official released onnx opset versions."
    )
    assert one_line(RuntimeError(text)) == (
        "[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed: ONNX Runtime only *guarantees* support "
        "for models stamped with official released onnx opset versions."
    )


def test_one_line_keeps_the_lines_that_explain_the_first():
    # ORT's invalid-dimensions reason: which index, got what, expected what.
    text = (
        "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x for the following "
        "indices\n index: 0 Got: 64 Expected: 48\n index: 1 Got: 3 Expected: 4\n Please fix either the "
        "inputs/outputs or the model."
    )
    assert one_line(RuntimeError(text)) == (
        "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x for the following "
        "indices; index: 0 Got: 64 Expected: 48; index: 1 Got: 3 Expected: 4; Please fix either the "
        "inputs/outputs or the model."
    )
    # After a line that ends a sentence (or says "...:"), a space is enough.
    assert one_line(RuntimeError("Load failed.\nThe reason:\nthis")) == "Load failed. The reason: this"


def test_one_line_leaves_out_places_on_every_line_and_the_stack():
    place = "/ort/core/graph/graph.cc:1234 void onnxruntime::Graph::Resolve(const onnxruntime::Graph&) const"
    text = f"Load failed\n{place} the reason\nStacktrace:\n{place}\n#1 0x7f00 in onnxruntime::Run"
    assert one_line(RuntimeError(text)) == "Load failed; the reason"


def test_one_line_is_bounded():
    # The middle goes: ORT's reason comes last, after the node's inputs and outputs.
    line = one_line(RuntimeError("\n".join(f"node n{i} has no input" for i in range(1000))))
    assert len(line) <= 500 and " ... " in line and line.startswith("node n0 has no input; node n1")
    assert line.endswith("node n999 has no input")
    assert one_line(RuntimeError("a" * 30 + "b" * 30), limit=20) == "a" * 5 + " ... " + "b" * 10
    assert one_line(RuntimeError("  \n ")) == "RuntimeError"
