"""docs/tune.md's commands, run as written (on the sample encoder block, with
a small budget appended: the last --budget / --tune-budget wins)."""

from __future__ import annotations

import json
import shlex

import numpy as np
from tunetools import ROOT, SAMPLES, cli

DOC = (ROOT / "docs" / "tune.md").read_text()


def commands(section: str) -> list[list[str]]:
    return [shlex.split(line.strip())[1:] for line in section.splitlines() if line.startswith("    quake-onnx ")]


def test_the_commands_at_the_top(tmp_path, monkeypatch):
    top = DOC.split("\n## ")[0]
    found = commands(top)
    assert [c[0] for c in found] == ["tune", "tune", "tune", "tune"]
    (tmp_path / "model.onnx").write_bytes((SAMPLES / "encoder_block.onnx").read_bytes())
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "data.npz",
        X=rng.standard_normal((1, 64, 128)).astype(np.float32),
        MASK=np.zeros((1, 1, 64, 64), np.float32),
    )
    monkeypatch.chdir(tmp_path)
    for args in found:
        result = cli(*args, "--budget", "4")
        expected = (0, 1) if "--require-speedup" in args else (0,)
        assert result.exit_code in expected, (args, result.stdout, result.stderr)
        assert (tmp_path / "model.tuned.onnx").is_file()
    report = json.loads((tmp_path / "tune.json").read_text())
    assert report["inputs"]["source"] == "npz" and report["tolerance"]["max_abs_error"] == 1e-2
    assert (tmp_path / "tune.md").read_text().startswith("## quake-onnx tune")


def test_the_zoo_command(tmp_path, monkeypatch):
    (found,) = commands(DOC.split("## In a zoo")[1].split("\n## ")[0])
    assert found[:3] == ["zoo", "models/", "--tune"]
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "encoder.onnx").write_bytes((SAMPLES / "encoder_block.onnx").read_bytes())
    monkeypatch.chdir(tmp_path)
    result = cli(*found, "--tune-budget", "4", "--runs", "3", "--warmup", "1")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert json.loads((tmp_path / "zoo.json").read_text())["settings"]["tune"] == 4


def test_the_attention_precision_error_as_written(tmp_path):
    """docs/tune.md's example of a bad --attention-precision, line for line."""
    section = " ".join(DOC.split("## Exit codes and errors")[1].split())
    written = section.split("(`error: Invalid value for '--attention-precision'")[1].split("`;")[0]
    result = cli("tune", SAMPLES / "encoder_block.onnx", tmp_path / "out.onnx", "--attention-precision", "fp16")
    assert result.exit_code == 2 and not (tmp_path / "out.onnx").exists()
    assert result.stderr.strip() == "error: Invalid value for '--attention-precision'" + written
