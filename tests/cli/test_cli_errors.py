"""Every way `quake-onnx optimize` / `inspect` can be misused: one error line,
the right exit code, no traceback, and nothing written or overwritten."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from clitools import assert_one_line_error, cli, entry_point, folder_state, wide_model

import quake_onnx

SENTINEL = b"previous output, must survive"


@pytest.fixture
def work(tmp_path, encoder_block):
    shutil.copy(encoder_block, tmp_path / "in.onnx")
    return tmp_path


def _bad_inputs(folder: Path, encoder_block: Path) -> dict:
    data = encoder_block.read_bytes()
    files = {
        "text.onnx": b"hello, not a model\n",
        "truncated.onnx": data[: len(data) // 2],
        "truncated_tail.onnx": data[:-7],
        "empty.onnx": b"",
        "png.onnx": b"\x89PNG\r\n\x1a\n" + bytes(64),
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    (folder / "adir").mkdir()
    return {**{n: folder / n for n in files}, "missing": folder / "missing.onnx", "directory": folder / "adir"}


@pytest.mark.parametrize("command", ["optimize", "inspect"])
def test_bad_input_files(tmp_path, encoder_block, command):
    bad = _bad_inputs(tmp_path, encoder_block)
    expected = {
        "text.onnx": "not an ONNX model",
        "truncated.onnx": "not an ONNX model",
        "truncated_tail.onnx": "not an ONNX model",
        "empty.onnx": "not an ONNX model",
        "png.onnx": "not an ONNX model",
        "missing": "does not exist",
        "directory": "is a directory",
    }
    for key, path in bad.items():
        out = tmp_path / f"out_{key}.onnx"
        args = [command, path] + ([out] if command == "optimize" else [])
        before = folder_state(tmp_path)
        line = assert_one_line_error(cli(*args), 2, expected[key])
        assert str(path) in line
        assert folder_state(tmp_path) == before, key


@pytest.mark.parametrize("command", ["optimize", "inspect", "check", "tune", "calibrate"])
def test_names_that_do_not_show_as_typed_are_quoted(tmp_path, monkeypatch, command):
    """A missing IN of spaces, a leading space or a tab is named in quotes (it
    read "error:   does not exist"); '-' says that models come from files."""
    monkeypatch.chdir(tmp_path)
    outputs = [tmp_path / "out.onnx"] if command in ("optimize", "tune", "calibrate") else []
    for name in (" ", " in.onnx", "a\tb.onnx"):
        line = assert_one_line_error(cli(command, name, *outputs), 2, "does not exist")
        # the name as given or resolved in the working folder, in quotes
        assert line.startswith("error: '") and f"{repr(name)[1:-1]}' does not exist" in line, line
    line = assert_one_line_error(cli(command, "-", *outputs), 2, "does not exist")
    assert "not from standard input" in line
    assert not list(tmp_path.iterdir())


def test_a_written_name_with_a_leading_space_is_quoted(work):
    result = cli("optimize", work / "in.onnx", work / " out.onnx")
    assert result.exit_code == 0, result.stderr
    assert f"wrote '{work / ' out.onnx'}'" in result.stdout
    assert (work / " out.onnx").is_file()


def test_unreadable_input(work, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(onnx, "load", denied)
    assert_one_line_error(cli("optimize", work / "in.onnx", work / "out.onnx"), 2, "cannot read")
    assert not (work / "out.onnx").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_input_mode(work):
    (work / "in.onnx").chmod(0)
    assert_one_line_error(cli("optimize", work / "in.onnx", work / "out.onnx"), 2, "cannot read")


def test_unwritable_destinations(work):
    (work / "file").write_bytes(b"x")
    (work / "outdir").mkdir()
    cases = {
        work / "no_such_folder" / "out.onnx": "does not exist",
        work / "file" / "out.onnx": "not a folder",
        work / "outdir": "is a directory",
    }
    if Path("/proc").is_dir():
        cases[Path("/proc/quake_out.onnx")] = "cannot write"
    before = folder_state(work)
    for dest, words in cases.items():
        assert_one_line_error(cli("optimize", work / "in.onnx", dest), 2, words)
        assert not dest.is_file()
    assert folder_state(work) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_folder(work):
    ro = work / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert_one_line_error(cli("optimize", work / "in.onnx", ro / "out.onnx"), 2, "permission denied")
    finally:
        ro.chmod(0o700)


def test_output_is_input_needs_in_place(work):
    src = work / "in.onnx"
    data = src.read_bytes()
    for dest in (src, work / "." / "in.onnx"):
        assert_one_line_error(cli("optimize", src, dest), 2, "--in-place")
    assert_one_line_error(cli("optimize", src), 2, "missing OUT")
    os.symlink(src, work / "link.onnx")
    assert_one_line_error(cli("optimize", src, work / "link.onnx"), 2, "--in-place")
    assert src.read_bytes() == data


@pytest.mark.parametrize(
    "options, words",
    [
        (["--order", "4"], "--order"),
        (["--order", "0"], "--order"),
        (["--order", "two"], "--order"),
        (["--ops", "softmax,tanh"], "unknown op tanh"),
        (["--ops", ","], "no op selected"),
        (["--frobnicate"], "no such option"),
        (["--report"], "--report"),
        (["--attention-precision", "fp16"], "--attention-precision"),
        (["--attention-precision", "float16"], "not one of float32, bfloat16"),
    ],
)
def test_bad_options(work, options, words):
    before = folder_state(work)
    assert_one_line_error(cli("optimize", work / "in.onnx", work / "out.onnx", *options), 2, words)
    if options[0] != "--report":
        assert_one_line_error(cli("inspect", work / "in.onnx", *options), 2, words)
    assert folder_state(work) == before


def test_missing_arguments():
    assert_one_line_error(cli("optimize"), 2, "missing argument")
    assert_one_line_error(cli("inspect"), 2, "missing argument")
    assert_one_line_error(cli("frobnicate"), 2, "no such command")


def test_report_destination_checked_before_work(work):
    (work / "rdir").mkdir()
    result = cli("optimize", work / "in.onnx", work / "out.onnx", "--report", work / "rdir")
    assert_one_line_error(result, 2, "report")
    assert not (work / "out.onnx").exists()


def test_failed_write_keeps_previous_output(work, monkeypatch):
    out = work / "out.onnx"
    out.write_bytes(SENTINEL)
    real_replace = os.replace

    def full_disk(a, b):
        if Path(b) == out:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", full_disk)
    before = folder_state(work)
    assert_one_line_error(cli("optimize", work / "in.onnx", out), 1, "no space left")
    assert out.read_bytes() == SENTINEL
    assert folder_state(work) == before  # no temporary file left behind


def test_unloadable_result_is_not_written(work, monkeypatch):
    """A rewrite ONNX Runtime cannot load must fail before OUT is touched."""
    opt = sys.modules["quake_onnx.pipeline.op_rewrite"]

    src = onnx.load(str(work / "in.onnx"))

    def rewrite(model, order, ops, skip, *_args, **_kwargs):
        from quake_onnx.rewrite.report import Report

        out = onnx.ModelProto()
        out.CopyFrom(model)
        node = out.graph.node[0]
        node.domain, node.op_type = "com.quake", "NoSuchOp"
        out.opset_import.append(onnx.helper.make_opsetid("com.quake", 1))
        return out, Report()

    monkeypatch.setattr(opt, "_rewrite", rewrite)
    out = work / "out.onnx"
    out.write_bytes(SENTINEL)
    before = folder_state(work)
    assert_one_line_error(cli("optimize", work / "in.onnx", out, "--no-ort-fusions"), 1, "does not load")
    assert out.read_bytes() == SENTINEL
    assert folder_state(work) == before
    assert src.graph.node  # the input model object is not involved


def test_external_data_missing_or_short(tmp_path):
    model, _ = wide_model(256)
    src = tmp_path / "ext.onnx"
    onnx.save(model, str(src), save_as_external_data=True, location="w.bin", size_threshold=1024)
    data = (tmp_path / "w.bin").read_bytes()
    (tmp_path / "w.bin").write_bytes(data[:100])
    for fusions in ("--ort-fusions", "--no-ort-fusions"):
        assert_one_line_error(cli("optimize", src, tmp_path / "o.onnx", fusions), 2, "truncated")
    (tmp_path / "w.bin").unlink()
    assert_one_line_error(cli("optimize", src, tmp_path / "o.onnx"), 2, "w.bin is missing")
    assert not (tmp_path / "o.onnx").exists()
    # A location leading out of the model's folder is named as such, even where
    # the file exists (fresh-user run: "../a/w.bin is missing").
    (tmp_path / "m").mkdir()
    (tmp_path / "w.bin").write_bytes(data)
    outside = onnx.load(str(src), load_external_data=False)
    for t in outside.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../w.bin"
    onnx.save(outside, str(tmp_path / "m" / "up.onnx"))
    line = assert_one_line_error(cli("optimize", tmp_path / "m" / "up.onnx", tmp_path / "o.onnx"), 2, "'../w.bin'")
    assert "inside the model's folder" in line


@pytest.mark.parametrize(
    "args, code",
    [(["optimize", "{bad}", "{out}"], 2), (["optimize", "{good}", "{out}", "--order", "4"], 2), (["inspect"], 2)],
)
def test_real_process_prints_one_line(tmp_path, encoder_block, args, code):
    """Outside CliRunner: the installed command, its real stderr."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(encoder_block.read_bytes()[:5000])
    out = tmp_path / "out.onnx"
    args = [a.format(bad=bad, out=out, good=encoder_block) for a in args]
    env = dict(os.environ, PYTHONPATH=str(Path(quake_onnx.__file__).parent.parent))
    proc = subprocess.run(entry_point() + args, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == code, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()
