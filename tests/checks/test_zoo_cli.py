"""`quake-onnx zoo`: failures that do not stop the run, shards, jobs, timeouts, errors."""

import json
import xml.etree.ElementTree as ET

import pytest
from checktools import FAST, SAMPLES, cli, copy_models, one_line, validate


@pytest.fixture(scope="module")
def mixed_zoo(tmp_path_factory):
    """Two good models, a corrupt one, one with a missing dimension, and an
    already optimized *.quake.onnx that must be skipped."""
    root = copy_models(tmp_path_factory.mktemp("mixed"), "legacy_opset11", "vit_block")
    (root / "broken").mkdir()
    (root / "broken" / "model.onnx").write_bytes(b"\x08\x07garbage that is not protobuf")
    (root / "extra").mkdir()
    (root / "extra" / "bert.onnx").write_bytes((SAMPLES / "zoo" / "bert_encoder" / "model.onnx").read_bytes())
    (root / "vit_block" / "model.quake.onnx").write_bytes(b"skipped by name")
    return root


def _zoo(root, tmp_path, *args):
    out = tmp_path / "r.json"
    r = cli("zoo", root, *FAST, "--json", out, *args)
    return r, (json.loads(out.read_text()) if out.exists() else None)


def _verdicts(report):
    return [(m["name"], m["status"], m["stage"]) for m in report["models"]]


def test_broken_models_are_reported_and_the_others_still_run(mixed_zoo, tmp_path):
    r, report = _zoo(mixed_zoo, tmp_path, "--junit", tmp_path / "r.xml")
    one_line(r, 1, prefix="FAIL: ", contains="2 of 4 models failed")
    validate(report)
    assert _verdicts(report) == [
        ("broken", "error", "load"),
        ("extra/bert", "error", "inputs"),
        ("legacy_opset11", "pass", None),
        ("vit_block", "pass", None),
    ]
    broken = report["models"][0]
    assert "not an ONNX model" in broken["reason"]
    assert f"broken: error (load): {broken['reason']}" in r.stdout  # under the summary table
    assert "--dim seq=SIZE" in report["models"][1]["reason"]
    # failures are penalties in S(t): 2 of 4 within tolerance
    assert report["score"]["within"] == 2 and report["score"]["value"] < 1
    cases = {c.get("name"): c for c in ET.parse(tmp_path / "r.xml").getroot().iter("testcase")}
    assert cases["broken"].find("failure").get("message") == broken["reason"]
    assert cases["broken"].find("failure").get("type") == "error"
    assert cases["vit_block"].find("failure") is None


def test_dim_option_reaches_every_model(mixed_zoo, tmp_path):
    r, report = _zoo(mixed_zoo, tmp_path, "--dim", "seq=8")
    assert _verdicts(report)[1] == ("extra/bert", "pass", None)


def test_jobs_2_gives_the_verdicts_of_jobs_1(mixed_zoo, tmp_path):
    r1, one = _zoo(mixed_zoo, tmp_path, "--jobs", "1")
    r2, two = _zoo(mixed_zoo, tmp_path, "--jobs", "2")
    assert r1.exit_code == r2.exit_code == 1
    assert _verdicts(one) == _verdicts(two)
    assert [m["reason"] for m in one["models"]] == [m["reason"] for m in two["models"]]
    assert two["jobs"] == 2


def test_timeout_is_a_reported_failure(mixed_zoo, tmp_path):
    r, report = _zoo(mixed_zoo, tmp_path, "--timeout", "0.001", "--jobs", "2")
    assert r.exit_code == 1
    # Models that load take far longer than 1 ms; the corrupt one fails within
    # microseconds of the fork, so its own error may arrive first.
    status = {m["name"]: (m["status"], m["reason"]) for m in report["models"]}
    loadable = [name for name in status if not name.startswith("broken")]
    assert len(loadable) == 3
    assert all(status[name] == ("timeout", "timed out after 0.001 s") for name in loadable), status
    validate(report)


def test_a_model_killed_at_its_timeout_leaves_no_temporary_behind(mixed_zoo, tmp_path, monkeypatch):
    # Fresh-user run: zoo --tune with a model killed by --timeout (or the run
    # by Ctrl-C) left /tmp/quake-check-* and /tmp/quake-tune-*: each check
    # process now keeps its temporaries in a folder the zoo removes.
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))  # the check processes' too
    r, report = _zoo(mixed_zoo, tmp_path, "--tune", "--tune-budget", "20", "--timeout", "3", "--jobs", "2")
    assert any(m["status"] == "timeout" for m in report["models"]), [m["status"] for m in report["models"]]
    # pymp-*: multiprocessing's own folder of this (test) process, removed when it exits;
    # .ses: a file ONNX Runtime keeps in the temporary folder.
    assert [p.name for p in scratch.iterdir() if not p.name.startswith("pymp-") and p.name != ".ses"] == []


def _listed(root, shard):
    r = cli("zoo", root, "--list", "--shard", shard)
    assert r.exit_code == 0, r.stderr
    return [line.split("\t")[0] for line in r.stdout.splitlines()]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_shards_cover_every_model_exactly_once(tmp_path, n):
    root = tmp_path / "many"
    for i in range(10):  # listing loads nothing: empty files are enough
        (root / f"m{i}").mkdir(parents=True)
        (root / f"m{i}" / "model.onnx").write_bytes(b"")
    (root / "loose.onnx").write_bytes(b"")
    everything = _listed(root, "1/1")
    assert len(everything) == 11
    shards = [_listed(root, f"{i}/{n}") for i in range(1, n + 1)]
    flat = [m for s in shards for m in s]
    assert sorted(flat) == sorted(everything) and len(flat) == len(set(flat))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shards == [_listed(root, f"{i}/{n}") for i in range(1, n + 1)]  # deterministic


def test_a_shard_runs_only_its_models(mixed_zoo, tmp_path):
    r, report = _zoo(mixed_zoo, tmp_path, "--shard", "2/2")
    assert [m["name"] for m in report["models"]] == _listed(mixed_zoo, "2/2") == ["extra/bert", "vit_block"]
    assert report["shard"] == {"index": 2, "count": 2}


def test_min_score(tmp_path):
    root = copy_models(tmp_path / "z", "legacy_opset11")
    r, report = _zoo(root, tmp_path, "--min-score", "1000")
    one_line(r, 1, prefix="FAIL: ", contains="< --min-score 1000")
    assert report["counts"]["pass"] == 1


def test_markdown_to_stdout(tmp_path):
    root = copy_models(tmp_path / "z", "legacy_opset11")
    r = cli("zoo", root, *FAST, "--markdown", "-")
    assert r.exit_code == 0
    assert r.stdout.startswith("## quake-onnx zoo: S(t) = ")
    assert "PASS" not in r.stdout  # the human summary went to stderr


@pytest.mark.parametrize(
    "args, contains",
    [
        (["{tmp}/nothing"], "does not exist"),
        (["{tmp}/ "], "/ ' does not exist"),  # a name that does not show as typed is quoted
        (["{tmp}/file.onnx"], "is not a folder"),
        (["{tmp}/empty"], "no .onnx model"),
        (["{tmp}/z", "--shard", "0/2"], "between 1 and n"),
        (["{tmp}/z", "--shard", "3/2"], "between 1 and n"),
        (["{tmp}/z", "--shard", "two"], "expected i/n"),
        (["{tmp}/z", "--jobs", "0"], "--jobs"),
        (["{tmp}/z", "--json", "{tmp}/no/dir/r.json"], "does not exist"),
        (["{tmp}/z", "--json", "{tmp}/same", "--junit", "{tmp}/same"], "name the same file"),
        (["{tmp}/z", "--json", "-", "--junit", "-"], "cannot both write to stdout"),
        (["{tmp}/z", "--dim", "batch"], "not NAME=SIZE"),
    ],
)
def test_zoo_usage_errors_are_one_line_exit_2(tmp_path, args, contains):
    (tmp_path / "empty").mkdir()
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "a.onnx").write_bytes(b"")
    (tmp_path / "file.onnx").write_bytes(b"")
    one_line(cli("zoo", *[a.format(tmp=tmp_path) for a in args]), 2, contains=contains)


def test_an_empty_output_passes_with_no_top1(tmp_path):
    # Softmax over [0, 128]: equal (empty) outputs pass; top-1 has no row to
    # be measured on, so the reports say "-" (JSON null), not nan.
    from onnx import TensorProto, helper, save

    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [0, 128]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "g", info[:1], info[1:])
    (tmp_path / "z").mkdir()
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), tmp_path / "z" / "e.onnx")
    r, report = _zoo(tmp_path / "z", tmp_path, "--junit", tmp_path / "r.xml")
    assert r.exit_code == 0, r.stdout + r.stderr
    validate(report)
    (model,) = report["models"]
    assert model["status"] == "pass" and model["summary"]["min_top1_agreement"] is None
    assert model["outputs"][0]["top1_agreement"] is None and model["outputs"][0]["rows"] == 0
    row = next(line for line in r.stdout.splitlines() if line.startswith("│ e "))
    assert [c.strip() for c in row.split("│")][4:6] == ["1.000000", "-"], row  # cosine, top-1
    assert "nan" not in r.stdout
    (case,) = ET.parse(tmp_path / "r.xml").getroot().iter("testcase")
    assert "top-1 -, top-5 -" in case.find("system-out").text


@pytest.mark.parametrize(
    "args, contains",
    [
        (["--timeout", "0"], "'--timeout': 0 is not a number of seconds > 0"),
        (["--penalty", "2"], "'--penalty'"),
        (["--tune-budget", "3"], "'--tune-budget': applies only with --tune"),
        (["--tune-attention-precision", "float32"], "'--tune-attention-precision': applies only with --tune"),
    ],
)
def test_options_that_would_mean_nothing_are_refused(tmp_path, args, contains):
    """Accepted before (fresh-user run): --timeout 0 meant no limit while the
    report recorded 0.0; a penalty above 1 made a failing model raise S(t);
    the --tune options did nothing without --tune."""
    (tmp_path / "z").mkdir()
    one_line(cli("zoo", tmp_path / "z", *args), 2, contains=contains)
