"""`quake-onnx tune` on the command line: errors as `optimize` answers them
(one line, exit 2, nothing written), reports, --require-speedup; the
measurements made up (tunetools.FakeBench in place of the real bench)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from tunetools import SAMPLES, FakeBench, assert_one_line_error, cli, two_groups_model, validate

import quake_onnx
import quake_onnx.tuning.bench as bench_module
from quake_onnx.tuning import TuneError

ENCODER = SAMPLES / "encoder_block.onnx"


def files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def work(tmp_path):
    two_groups_model(tmp_path / "in.onnx")
    return tmp_path


@pytest.fixture
def made_up(monkeypatch):
    """The CLI measures with a FakeBench: factors by rule (default every group 0.9)."""
    settings = {"factor": lambda group, choice, config: 0.9}

    def make(prep, source, feeds, threads, **kw):
        return FakeBench(prep, **settings)

    monkeypatch.setattr(bench_module, "ModelBench", make)
    return settings


@pytest.mark.parametrize(
    "content, expected",
    [(b"hello, not a model\n", "not an ONNX model"), (b"", "not an ONNX model"), (None, "does not exist")],
)
def test_bad_input_files(tmp_path, content, expected):
    src = tmp_path / "in.onnx"
    if content is not None:
        src.write_bytes(content)
    before = files(tmp_path)
    line = assert_one_line_error(cli("tune", src, tmp_path / "out.onnx"), 2, expected)
    assert str(src) in line
    assert files(tmp_path) == before


def test_a_folder_as_input(tmp_path):
    (tmp_path / "adir").mkdir()
    assert_one_line_error(cli("tune", tmp_path / "adir", tmp_path / "out.onnx"), 2, "is a directory")


def test_an_optimized_model_is_refused(work):
    # tune measures a model's ONNX Runtime ops against com.quake ones: one that
    # already has com.quake nodes has no original to measure against.
    optimized = work / "q.onnx"
    quake_onnx.optimize(work / "in.onnx", optimized)
    before = files(work)
    line = assert_one_line_error(cli("tune", optimized, work / "out.onnx"), 2, "already has com.quake nodes")
    assert str(optimized) in line and "tune the model it was made from" in line
    assert files(work) == before
    with pytest.raises(TuneError, match="^the model already has com.quake nodes") as info:
        quake_onnx.tune(onnx.load(str(optimized)))
    assert info.value.exit_code == 2


def test_missing_out(work):
    assert_one_line_error(cli("tune", work / "in.onnx"), 2, "OUT")


def test_out_is_the_input(work):
    before = files(work)
    assert_one_line_error(cli("tune", work / "in.onnx", work / "in.onnx"), 2, "is the input")
    assert files(work) == before


def test_out_is_the_inputs_external_data(tmp_path):
    two_groups_model(tmp_path / "ext.onnx", external=True)
    before = files(tmp_path)
    assert_one_line_error(
        cli("tune", tmp_path / "ext.onnx", tmp_path / "ext.onnx.data"), 2, "external data file of the input model"
    )
    assert files(tmp_path) == before


@pytest.mark.parametrize("option", ["--report", "--markdown"])
def test_a_report_over_the_input(work, option):
    before = files(work)
    assert_one_line_error(cli("tune", work / "in.onnx", work / "out.onnx", option, work / "in.onnx"), 2, "input")
    assert files(work) == before


def test_a_report_over_the_output(work):
    assert_one_line_error(
        cli("tune", work / "in.onnx", work / "out.onnx", "--report", work / "out.onnx"), 2, "output model"
    )


def test_report_and_markdown_the_same_file(work):
    assert_one_line_error(
        cli("tune", work / "in.onnx", work / "out.onnx", "--report", work / "r", "--markdown", work / "r"),
        2,
        "same file",
    )


def test_a_report_over_the_input_set(work):
    np.savez(work / "data.npz", X=np.zeros((8, 512), np.float32))
    before = files(work)
    assert_one_line_error(
        cli("tune", work / "in.onnx", work / "out.onnx", "--inputs", work / "data.npz", "--report", work / "data.npz"),
        2,
        "input set",
    )
    assert files(work) == before


@pytest.mark.parametrize(
    "args, contains",
    [
        (["--budget", "0"], "--budget"),
        (["--budget", "-5"], "--budget"),
        (["--budget", "soon"], "--budget"),
        (["--threads", "0"], "--threads"),
        (["--min-cosine", "2"], "--min-cosine"),
        (["--max-abs-error", "-1"], "--max-abs-error"),
        (["--min-top1-agreement", "1.5"], "--min-top1-agreement"),
        (["--require-speedup", "-1"], "--require-speedup"),
        (["--attention-precision", "fp16"], "--attention-precision"),
        (["--attention-precision", ""], "--attention-precision"),
        (["--dim", "seq"], "NAME=SIZE"),
        (["--custom-ops-library", "/nonexistent/lib.so"], "does not exist"),
        (["--inputs", "/nonexistent/data.npz"], "does not exist"),
        (["--no-such-option"], "no such option"),
    ],
)
def test_bad_options(work, args, contains):
    before = files(work)
    assert_one_line_error(cli("tune", work / "in.onnx", work / "out.onnx", *args), 2, contains)
    assert files(work) == before


def test_inputs_that_do_not_fit(work):
    np.savez(work / "data.npz", X=np.zeros((3, 512), np.float32))
    assert_one_line_error(
        cli("tune", work / "in.onnx", work / "out.onnx", "--inputs", work / "data.npz"), 2, "has shape [3, 512]"
    )
    assert not (work / "out.onnx").exists()


def test_a_symbolic_dimension_to_set(tmp_path):
    src = tmp_path / "sym.onnx"
    model = two_groups_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "rows"
    onnx.save(model, src)
    assert_one_line_error(cli("tune", src, tmp_path / "out.onnx"), 2, "--dim rows=SIZE")


def test_tunes_and_writes_reports(work, made_up):
    out, report, md = work / "out.onnx", work / "r.json", work / "r.md"
    result = cli("tune", work / "in.onnx", out, "--report", report, "--markdown", md)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stdout.startswith("estimate: ~")
    assert "tuned: 1.372x" in result.stdout and f"wrote {out}" in result.stdout
    data = json.loads(report.read_text())
    validate(data)
    assert data["result"] == "tuned" and data["output"] == str(out)
    assert "| softmax Softmax [8,512] | 1 | replaced | order 1 |" in md.read_text()
    assert any(n.domain == "com.quake" for n in onnx.load(out).graph.node)


def test_report_to_stdout(work, made_up):
    result = cli("tune", work / "in.onnx", work / "out.onnx", "--report", "-")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    data = json.loads(result.stdout)
    validate(data)
    assert data["result"] == "tuned" and "tuned: 1.372x" in result.stderr and not (work / "-").exists()
    both = cli("tune", work / "in.onnx", work / "out2.onnx", "--report", "-", "--markdown", "-")
    assert_one_line_error(both, 2, "both '-'")


@pytest.mark.parametrize("given, recorded", [(None, "auto"), ("float32", "float32"), ("BFloat16", "bfloat16")])
def test_attention_precision_in_the_report(given, recorded, tmp_path, made_up):
    """The GPT-2 decoder sample (two attention blocks): the choice is in the report
    and, with float32, no configuration and no node of the result is bfloat16."""
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    option = ["--attention-precision", given] if given else []
    result = cli("tune", SAMPLES / "zoo" / "gpt2_decoder" / "model.onnx", out, "--report", report, *option)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    data = json.loads(report.read_text())
    validate(data)
    assert data["attention_precision"]["option"] == recorded
    if recorded == "float32":
        assert "bfloat16" not in {c["attention_precision"] for c in data["configurations"]}
        assert not any(
            a.name == "precision" and a.s == b"bfloat16" for n in onnx.load(out).graph.node for a in n.attribute
        )
        assert "note: attention precision bfloat16: not tried, float32 asked for" in result.stdout


def test_require_speedup(work, made_up):
    result = cli("tune", work / "in.onnx", work / "out.onnx", "--require-speedup", "1.5")
    assert result.exit_code == 1
    assert result.stderr.strip() == "FAIL: speedup 1.372x < --require-speedup 1.5x"
    assert (work / "out.onnx").is_file()  # the result is written all the same
    assert cli("tune", work / "in.onnx", work / "out2.onnx", "--require-speedup", "1.3").exit_code == 0


def test_nothing_faster_writes_the_original(work, made_up):
    made_up["factor"] = lambda group, choice, config: 1.0
    result = cli("tune", work / "in.onnx", work / "out.onnx")
    assert result.exit_code == 0, result.stderr
    assert "kept the original" in result.stdout and "(the original)" in result.stdout
    assert (work / "out.onnx").read_bytes() == (work / "in.onnx").read_bytes()
    result = cli("tune", work / "in.onnx", work / "out2.onnx", "--require-speedup", "1.01")
    assert result.exit_code == 1 and "FAIL: speedup 1.000x" in result.stderr
    assert (work / "out2.onnx").read_bytes() == (work / "in.onnx").read_bytes()


def test_runs_from_another_folder(work, made_up, monkeypatch):
    monkeypatch.chdir(work)
    shutil.copy(work / "in.onnx", work / "copy.onnx")
    assert cli("tune", "copy.onnx", "out.onnx").exit_code == 0
    assert (work / "out.onnx").is_file()


def test_help_lists_the_options():
    result = cli("tune", "--help")
    assert result.exit_code == 0
    for option in (
        "--inputs",
        "--dim",
        "--min-cosine",
        "--max-abs-error",
        "--min-top1-agreement",
        "--threads",
        "--budget",
        "--report",
        "--markdown",
        "--allow-exaq",
        "--custom-ops-library",
        "--require-speedup",
        "--attention-precision",
    ):
        assert option in result.stdout, option


def test_check_tune_cannot_go_with_optimized(work):
    assert_one_line_error(
        cli("check", work / "in.onnx", "--tune", "--optimized", work / "in.onnx"), 2, "cannot go with --optimized"
    )


@pytest.mark.parametrize("command", ["check", "zoo"])
def test_tune_budget_must_be_positive(work, command):
    target = work / "in.onnx" if command == "check" else work
    assert_one_line_error(cli(command, target, "--tune", "--tune-budget", "0"), 2, "--tune-budget")


@pytest.mark.parametrize("command", ["check", "zoo"])
def test_tune_attention_precision_is_checked(work, command):
    target = work / "in.onnx" if command == "check" else work
    result = cli(command, target, "--tune", "--tune-attention-precision", "fp16")
    assert_one_line_error(result, 2, "--tune-attention-precision")


@pytest.mark.parametrize(
    "inputs, message",
    [
        ([{"X": np.ones((8, 512), np.float32)}, {"X": np.ones((4, 512), np.float32)}], "(set 2 of 2)"),
        ([{"X": np.ones((8, 512), np.float32)}, {"W": np.ones((8, 512), np.float32)}], "(set 2 of 2)"),
        ({"X": np.ones((8, 512), np.float32)}, "give a list of feeds"),
        ([np.ones((8, 512), np.float32)], "give a list of feeds"),
    ],
)
def test_every_feed_is_checked_before_the_measurement(work, inputs, message):
    # Fresh-user run: only the first feed was run first; a later bad one failed
    # deep in the measurement with ONNX Runtime's own InvalidArgument or a
    # ValueError, and a dict in place of a list of dicts with "dictionary
    # update sequence ...".
    with pytest.raises(TuneError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        quake_onnx.tune(work / "in.onnx", None, inputs=inputs, budget=3)
    assert info.value.exit_code == 2


def test_a_kept_original_quotes_its_figure_once():
    # Fresh-user run: "... spread (1.084x [0.904, 1.520]) (measured 1.084x [0.904, 1.520])".
    from quake_onnx.tuning.report import headline

    stat = {"median": 1.084, "q1": 0.904, "q3": 1.52}
    quoted = {"result": "kept", "final": {"speedup": stat}, "reason": "spread (1.084x [0.904, 1.520])"}
    assert headline(quoted) == "kept the original: spread (1.084x [0.904, 1.520])"
    plain = {"result": "kept", "final": {"speedup": stat}, "reason": "no candidate node"}
    assert headline(plain) == "kept the original: no candidate node (measured 1.084x [0.904, 1.520])"
