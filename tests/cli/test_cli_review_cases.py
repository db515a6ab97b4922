"""The SIGTERM handler, report FILE parsers, kept data files and one_line
(4797623, e196cbd) against the cases review found."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import onnx
from clitools import assert_one_line_error, cli
from onnx import TensorProto, helper
from test_file_safety import run_model, save_external, save_pointing_at

from quake_onnx.sessions import one_line

ZOO_SAMPLE = Path(__file__).resolve().parent.parent.parent / "sample_models" / "zoo"


# --------------------------------------------------------------- SIGTERM


def test_an_in_process_run_leaves_the_sigterm_handler_as_it_found_it():
    # _OneLineErrors.main installs _terminate and never restores the previous
    # handler: after one CliRunner call (or any embedding caller), SIGTERM in
    # the host process raises quake_onnx.cli.Terminated wherever it is. Under
    # pytest that is recorded as one failed test and the session goes on,
    # so a CI job timeout's SIGTERM no longer stops the run.
    before = signal.getsignal(signal.SIGTERM)
    assert cli("lib-path").exit_code == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_run_outside_the_main_thread_is_not_a_signal_error():
    # signal.signal() raises ValueError off the main thread; it is called
    # outside main's try, so the caller gets a raw ValueError, not a result.
    out = {}

    def run():
        from typer.testing import CliRunner

        from quake_onnx.cli import app

        out["r"] = CliRunner().invoke(app, ["lib-path"])

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert out["r"].exit_code == 0, repr(out["r"].exception)


# --------------------------------------------------------------- report FILEs


def test_junit_naming_a_folder_is_refused_like_json_and_markdown(tmp_path, monkeypatch):
    # _REPORTS["junit"] was left without parser=_report_file: `--junit out/`
    # writes a file named 'out' (checked: a full zoo run exits 0 and leaves it).
    monkeypatch.chdir(tmp_path)
    zoo = ZOO_SAMPLE / "legacy_opset11"
    assert_one_line_error(cli("zoo", zoo, "--list", "--markdown", "nodir/"), contains="names a folder")
    assert_one_line_error(cli("zoo", zoo, "--list", "--junit", "nodir/"), contains="names a folder")


# --------------------------------------------------------------- data files kept


def test_a_data_file_a_model_in_a_parent_folder_names_is_kept(tmp_path, monkeypatch):
    # top/out/o.onnx keeps its weights in top/out/d.bin, which top/copy.onnx
    # also names (as out/d.bin: a location that stays in its model's folder).
    # The folders from OUT's down were all that was searched, so replacing
    # top/out/o.onnx deletes d.bin (and may hand its name to the new pair).
    top = tmp_path / "top"
    out = top / "out"
    out.mkdir(parents=True)
    _, feeds, ref = save_external(out, "o.onnx", "d.bin")
    save_pointing_at(out / "o.onnx", "out/d.bin", top / "copy.onnx")
    save_external(tmp_path, "in.onnx", "in.onnx.data")
    monkeypatch.chdir(tmp_path)
    result = cli("optimize", "in.onnx", "top/out/o.onnx", "--min-elements", "0")
    assert result.exit_code == 0, result.stderr
    assert (out / "d.bin").exists()
    run_model(top / "copy.onnx", feeds)


# --------------------------------------------------------------- one_line


def _long_node_error_model(path, n=12):
    names = [f"/model/encoder/layer.{i}/attention/output/dense/Add_output_0" for i in range(n)]
    node = helper.make_node("Concat", names, ["Y"], name="/model/encoder/Concat", axis=0, bogus=1)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 4]) for x in names],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def test_one_line_keeps_the_reason_at_the_end_of_a_long_node_error(tmp_path):
    # ORT's "In Node, (name, op, ...) : (every input: type, ...) -> (...) ,
    # Error <reason>" is one line; with many inputs it passes 500 characters
    # and the cut at the end drops the reason. first_line kept it.
    import onnxruntime as ort

    path = _long_node_error_model(tmp_path / "m.onnx")
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        assert "Unrecognized attribute: bogus" in str(e)
        assert "Unrecognized attribute: bogus" in one_line(e)
    else:
        raise AssertionError("ORT loaded the model")


def test_optimize_says_why_the_input_model_does_not_load(tmp_path):
    path = _long_node_error_model(tmp_path / "m.onnx")
    assert_one_line_error(cli("optimize", path, tmp_path / "o.onnx"), contains="Unrecognized attribute: bogus")
