"""`quake-onnx optimize` / `inspect` doing their job, and quake_onnx.optimize()."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from clitools import assert_one_line_error, cli, encoder_feeds, folder_state, quake_nodes, run_model, wide_model

import quake_onnx


def _cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("fusions", ["--ort-fusions", "--no-ort-fusions"])
def test_optimize_encoder_block(tmp_path, encoder_block, fusions):
    out, report = tmp_path / "enc.quake.onnx", tmp_path / "report.json"
    result = cli("optimize", encoder_block, out, "--explain", "--report", report, fusions)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert str(out) in result.stdout

    data = json.loads(report.read_text())
    replaced = [d for d in data["decisions"] if d["replaced"]]
    assert data["replaced"] == len(replaced) == sum(data["per_rule"].values())
    assert data["skipped"] == len(data["decisions"]) - len(replaced)
    # Softmax, GELU and the SiLU gate of the block are all rewritten; the attention block
    # (4 heads x 64 x 64 scores) is below the fusion's break-even and left to them.
    assert data["replaced"] >= 3
    skipped = [d for d in data["decisions"] if not d["replaced"]]
    assert [(d["rule"], "break-even" in d["reason"]) for d in skipped] == [("attention", True)]
    model = onnx.load(str(out))
    assert len(quake_nodes(model)) == data["replaced"]
    assert {n.op_type for n in quake_nodes(model)} >= {"Softmax", "Gelu"}
    assert not any(
        n.op_type in ("Softmax", "Gelu", "Sigmoid") and n.domain in ("", "ai.onnx") for n in model.graph.node
    )
    if fusions == "--no-ort-fusions":
        assert not any(n.domain == "com.microsoft" for n in model.graph.node)

    # --explain names every candidate and says what happened to it.
    for d in data["decisions"]:
        # (a Softmax has two lines: the attention rule's and the softmax rule's)
        line = next((ln for ln in result.stdout.splitlines() if d["node"] in ln and d["reason"] in ln), None)
        assert line is not None, d["node"]
        assert ("replaced" if d["replaced"] else "kept") in line and d["reason"] in line
    # The summary table's total row matches the report.
    total = next(ln for ln in result.stdout.splitlines() if "total" in ln)
    assert str(data["replaced"]) in total

    feeds = encoder_feeds()
    ref, got = run_model(encoder_block, feeds), run_model(out, feeds)
    assert np.isfinite(got).all()
    assert _cosine(ref, got) > 0.9999


def test_ops_and_skip_nodes(tmp_path, encoder_block):
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    assert cli("optimize", encoder_block, out, "--ops", "softmax", "--report", report).exit_code == 0
    data = json.loads(report.read_text())
    assert set(data["per_rule"]) == {"softmax"}, data["per_rule"]
    assert [n.op_type for n in quake_nodes(onnx.load(str(out)))] == ["Softmax"]

    softmax = next(d["node"] for d in data["decisions"] if d["replaced"])
    result = cli("optimize", encoder_block, out, "--ops", "softmax,GELU", "--skip-nodes", softmax, "--report", report)
    assert result.exit_code == 0, result.stderr
    data = json.loads(report.read_text())
    kept = [d for d in data["decisions"] if d["node"] == softmax]
    assert kept and not any(d["replaced"] for d in kept)
    ops = {n.op_type for n in quake_nodes(onnx.load(str(out)))}
    assert "Gelu" in ops and "Softmax" not in ops


def test_report_to_stdout(tmp_path, encoder_block):
    # '-' as for check's and zoo's --json: the JSON alone on stdout, the summary on stderr.
    out = tmp_path / "o.onnx"
    result = cli("optimize", encoder_block, out, "--ops", "softmax", "--report", "-")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["per_rule"] == {"softmax": 1}
    assert f"wrote {out}" in result.stderr and not (tmp_path / "-").exists()


def test_bits_without_exaq_is_refused(tmp_path, encoder_block):
    for command in (("optimize", encoder_block, tmp_path / "o.onnx"), ("inspect", encoder_block)):
        assert_one_line_error(cli(*command, "--bits", "2"), 2, "--softmax-method exaq")
    assert not (tmp_path / "o.onnx").exists()
    result = cli("optimize", encoder_block, tmp_path / "o.onnx", "--softmax-method", "exaq", "--bits", "2")
    assert result.exit_code == 0 and "softmax exaq 2 bits" in result.stdout, result.stderr


def test_unknown_skip_node_warns(tmp_path, encoder_block):
    result = cli("optimize", encoder_block, tmp_path / "o.onnx", "--skip-nodes", "no_such_node")
    assert result.exit_code == 0
    assert "warning:" in result.stderr and "no_such_node" in result.stderr


def test_inspect_writes_nothing(tmp_path, encoder_block):
    src = tmp_path / "in.onnx"
    shutil.copy(encoder_block, src)
    before = folder_state(tmp_path)
    result = cli("inspect", src, "--order", "1")
    assert result.exit_code == 0, result.stderr
    assert folder_state(tmp_path) == before
    assert "would replace" in result.stdout and "nothing written" in result.stdout
    _, report = quake_onnx.optimize(src)
    for d in report.decisions:
        assert d.node in result.stdout


@pytest.mark.parametrize("args", [["--in-place"], ["{src}", "--in-place"]])
def test_in_place(tmp_path, encoder_block, args):
    src = tmp_path / "model.onnx"
    shutil.copy(encoder_block, src)
    result = cli("optimize", src, *[a.format(src=src) for a in args])
    assert result.exit_code == 0, result.stderr
    assert quake_nodes(onnx.load(str(src)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary files left
    # Optimising an optimised model changes nothing more and still loads.
    again = cli("optimize", src, "--in-place")
    assert again.exit_code == 0, again.stderr
    assert np.isfinite(run_model(src, encoder_feeds())).all()


def test_external_data_round_trip(tmp_path):
    model, feeds = wide_model(512)  # a 1 MiB weight
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    src = src_dir / "wide.onnx"
    onnx.save(model, str(src), save_as_external_data=True, location="weights.bin", size_threshold=1024)
    ref = run_model(src, feeds)
    for fusions in ("--ort-fusions", "--no-ort-fusions"):
        out = out_dir / f"wide{fusions}.onnx"
        result = cli("optimize", src, out, fusions, "--min-elements", "0")
        assert result.exit_code == 0, result.stderr
        data = out_dir / f"{out.name}.data"
        assert data.is_file() and data.stat().st_size >= 512 * 512 * 4
        assert out.stat().st_size < 64 * 1024  # the weight is not inside the .onnx
        stored = onnx.load(str(out), load_external_data=False)
        locations = {e.value for t in stored.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations == {data.name}
        assert quake_nodes(stored)
        np.testing.assert_allclose(run_model(out, feeds), ref, atol=3e-3)

    # In place: the new data file sits next to the model, the model still runs.
    result = cli("optimize", src, "--in-place", "--no-ort-fusions", "--min-elements", "0")
    assert result.exit_code == 0, result.stderr
    assert (src_dir / "wide.onnx.data").is_file()
    np.testing.assert_allclose(run_model(src, feeds), ref, atol=3e-3)


def test_python_api(tmp_path, encoder_block):
    model = onnx.load(str(encoder_block))
    before = model.SerializeToString()
    rewritten, report = quake_onnx.optimize(model, order=3, ops=["softmax"])
    assert model.SerializeToString() == before  # the caller's model is untouched
    assert report.counts() == {"softmax": 1}
    (node,) = quake_nodes(rewritten)
    assert {a.name: a.i for a in node.attribute}.get("order") == 3
    assert list(tmp_path.iterdir()) == []

    out = tmp_path / "m.onnx"
    rewritten, report = quake_onnx.optimize(encoder_block, out, ort_fusions=False)
    session = quake_onnx.InferenceSession(out)
    assert np.isfinite(session.run(None, encoder_feeds())[0]).all()
    with pytest.raises(quake_onnx.modelio.ModelFileError, match="unknown op"):
        quake_onnx.optimize(model, ops=["tanh"])


def test_ort_failure_falls_back_with_warning(tmp_path, encoder_block, monkeypatch):
    import onnxruntime as ort

    from quake_onnx import ort_fusions

    real = ort.InferenceSession

    def refusing(path, so=None, **kw):
        if so is not None and so.optimized_model_filepath:  # only the offline fusion session
            raise RuntimeError("cannot save optimized model\nsecond line")
        return real(path, so, **kw)

    monkeypatch.setattr(ort_fusions.ort, "InferenceSession", refusing)
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    result = cli("optimize", encoder_block, out, "--report", report)
    monkeypatch.setattr(ort_fusions.ort, "InferenceSession", real)
    assert result.exit_code == 0, result.stderr
    assert "warning: ONNX Runtime could not optimise the model: cannot save optimized model" in result.stderr
    assert json.loads(report.read_text())["warnings"]
    assert not any(n.domain == "com.microsoft" for n in onnx.load(str(out)).graph.node)


def test_output_shapes_are_stated(tmp_path, encoder_block):
    """ORT cannot infer through com.quake nodes; without value_info it stops
    fusing (SkipLayerNormalization, Gemm) after them at session time."""
    out = tmp_path / "o.onnx"
    assert cli("optimize", encoder_block, out, "--no-ort-fusions").exit_code == 0
    model = onnx.load(str(out))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
    expected = {"Softmax": [1, 4, 64, 64], "Gelu": [1, 64, 512], "Silu": [1, 64, 128]}
    for node in quake_nodes(model):
        assert shapes.get(node.output[0]) == expected[node.op_type], node.op_type


@pytest.mark.parametrize("fusions", [True, False])
def test_big_tensors_bypass_the_rewrite(tmp_path, monkeypatch, fusions):
    """Weights of 2 GB cannot go through protobuf copies; they are set aside
    during the rewrite (threshold lowered here so a 1 MiB weight takes that path)."""
    monkeypatch.setattr(quake_onnx.modelio, "STRIP_THRESHOLD", 1024)
    model, feeds = wide_model(512)
    before = model.SerializeToString()
    out = tmp_path / "o.onnx"
    rewritten, report = quake_onnx.optimize(model, out, ort_fusions=fusions, min_elements=0)
    assert model.SerializeToString() == before
    assert report.replaced
    weight = next(t for t in rewritten.graph.initializer if t.name == "W")
    assert weight.HasField("raw_data") and len(weight.raw_data) == 512 * 512 * 4
    src = tmp_path / "src.onnx"
    onnx.save(model, str(src))
    np.testing.assert_allclose(run_model(out, feeds), run_model(src, feeds), atol=3e-3)


def test_explain_names_unnamed_nodes_by_their_output(tmp_path):
    # Hand-built and some exported graphs leave node names empty: the line
    # (and the report) must still say which node it was.
    from onnx import TensorProto, helper

    shape = [4, 4096]
    nodes = [helper.make_node("Softmax", ["x"], ["probs"], axis=-1), helper.make_node("Sigmoid", ["probs"], ["gate"])]
    graph = helper.make_graph(
        nodes,
        "unnamed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("gate", TensorProto.FLOAT, shape)],
    )
    src, out, report = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "report.json"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    result = cli("optimize", src, out, "--explain", "--report", report)
    assert result.exit_code == 0, result.stderr
    assert "replaced (unnamed, output probs) (Softmax, rule softmax)" in result.stdout
    assert "replaced (unnamed, output gate) (Sigmoid, rule sigmoid)" in result.stdout
    names = {d["node"] for d in json.loads(report.read_text())["decisions"]}
    assert names == {"(unnamed, output probs)", "(unnamed, output gate)"}
    assert [n.name for n in onnx.load(src).graph.node] == ["", ""], "the input model was changed"
