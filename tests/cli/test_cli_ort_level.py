"""`--ort-level extended|all` of `quake-onnx optimize` / `inspect` on a small SiLU CNN."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from clitools import assert_one_line_error, cli, folder_state, quake_nodes, run_model
from onnx import TensorProto, helper, numpy_helper

C = 32
SHAPE = [1, C, 12, 12]


def _cnn(path, dtype=np.float32):
    """Conv -> SiLU -> Conv -> SiLU -> Conv, the SiLUs written as x * Sigmoid(x)."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "X"
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    for i in range(3):
        inits.append(numpy_helper.from_array((rng.standard_normal((C, C, 1, 1)) * 0.2).astype(dtype), f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", kernel_shape=[1, 1]))
        x = f"c{i}"
        if i < 2:
            nodes.append(helper.make_node("Sigmoid", [x], [f"s{i}"], name=f"sig{i}"))
            nodes.append(helper.make_node("Mul", [x, f"s{i}"], [f"a{i}"], name=f"mul{i}"))
            x = f"a{i}"
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("X", elem, SHAPE)],
        [helper.make_tensor_value_info(x, elem, SHAPE)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def cnn(tmp_path):
    return _cnn(tmp_path / "cnn.onnx")


def test_default_keeps_the_conv_silus_and_says_why(tmp_path, cnn):
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    result = cli("optimize", cnn, out, "--explain", "--report", report)
    assert result.exit_code == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["replaced"] == 0 and data["skipped"] == 2
    assert all("NCHWc" in d["reason"] for d in data["decisions"])
    assert "NCHWc conv layout" in result.stdout
    assert not quake_nodes(onnx.load(str(out)))
    assert "nchwc" not in result.stderr  # no layout warning: the model stays portable


def test_ort_level_all_replaces_them(tmp_path, cnn):
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    result = cli("optimize", cnn, out, "--ort-level", "all", "--report", report)
    assert result.exit_code == 0, result.stderr
    model = onnx.load(str(out))
    if not any(n.domain == "com.microsoft.nchwc" for n in model.graph.node):
        pytest.skip("ONNX Runtime lays out no NCHWc on this CPU")
    data = json.loads(report.read_text())
    assert data["replaced"] == 2, data["decisions"]
    assert [n.op_type for n in quake_nodes(model)] == ["Silu", "Silu"]
    # The warning: on stderr and in the report.
    assert result.stderr.startswith("warning: ") and "NCHWc" in result.stderr and "CPU" in result.stderr
    assert any("NCHWc" in w for w in data["warnings"])
    feeds = {"X": np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)}
    want, got = run_model(cnn, feeds), run_model(out, feeds)
    np.testing.assert_allclose(got, want, atol=5e-3)
    assert np.abs(got - want).max() > 0
    assert "float16" not in result.stderr  # a float32 model: nothing widened


def test_ort_level_all_says_when_float16_weights_become_float32(tmp_path):
    # ONNX Runtime's NCHWc convs run in float32: at level all it stores a
    # float16 model's conv weights as float32 (Casts keep the float16 edges).
    src, out, report = _cnn(tmp_path / "cnn16.onnx", np.float16), tmp_path / "out.onnx", tmp_path / "r.json"
    result = cli("optimize", src, out, "--ort-level", "all", "--report", report)
    assert result.exit_code == 0, result.stderr
    model = onnx.load(str(out))
    if not any(n.domain == "com.microsoft.nchwc" for n in model.graph.node):
        pytest.skip("ONNX Runtime lays out no NCHWc on this CPU")
    assert any(t.data_type == TensorProto.FLOAT for t in model.graph.initializer)
    (line,) = [w for w in json.loads(report.read_text())["warnings"] if "float16 weights" in w]
    assert line.startswith("ORT level 'all' keeps 0 of the model's 3 float16 weights as float16"), line
    assert "--ort-level extended keeps them float16" in line and line in " ".join(result.stderr.split())
    # At level extended nothing is widened and nothing is said.
    result = cli("optimize", src, tmp_path / "ext.onnx", "--ort-level", "extended")
    assert result.exit_code == 0 and "float16 weights" not in result.stderr, result.stderr
    assert all(t.data_type == TensorProto.FLOAT16 for t in onnx.load(str(tmp_path / "ext.onnx")).graph.initializer)


def test_inspect_takes_the_level_too(cnn):
    result = cli("inspect", cnn, "--ort-level", "ALL")
    assert result.exit_code == 0, result.stderr
    assert "replaced" in result.stdout


@pytest.mark.parametrize(
    "args,message",
    [(["--ort-level", "layout"], "--ort-level"), (["--ort-level", "all", "--no-ort-fusions"], "fusions")],
)
def test_bad_level_is_one_line_and_writes_nothing(tmp_path, cnn, args, message):
    out = tmp_path / "out.onnx"
    before = folder_state(tmp_path)
    assert_one_line_error(cli("optimize", cnn, out, *args), 2, message)
    assert folder_state(tmp_path) == before
