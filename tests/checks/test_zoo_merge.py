"""`quake-onnx zoo merge`: shard reports into the report of one run, its
refusals, and the CI workflow of docs/zoo.md run locally."""

import copy
import json
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from checktools import ROOT, cli, one_line, validate

from quake_onnx.check.runner import Thresholds
from quake_onnx.check.zoo import score


def split(report: dict, n: int) -> list[dict]:
    """The shard reports of `report` had it been run as --shard i/n (same per-model results)."""
    th, penalty = Thresholds(**report["settings"]["thresholds"]), report["settings"]["penalty"]
    shards = []
    for i in range(1, n + 1):
        part = copy.deepcopy(report)
        part["models"] = report["models"][i - 1 :: n]
        part["shard"] = {"index": i, "count": n}
        part["score"] = score(part["models"], th, penalty)
        part["counts"] = {s: sum(m["status"] == s for m in part["models"]) for s in report["counts"]}
        part["seconds"] = sum(m["seconds"] for m in part["models"])
        shards.append(json.loads(json.dumps(part)))
    return shards


def _save(tmp_path, reports, names=None):
    paths = []
    for k, r in enumerate(reports):
        p = tmp_path / (names[k] if names else f"shard-{k + 1}.json")
        p.write_text(json.dumps(r))
        paths.append(p)
    return paths


def test_merging_three_shards_gives_the_unsharded_report(sample_zoo, tmp_path):
    whole = sample_zoo["json"]
    paths = _save(tmp_path, split(whole, 3))
    r = cli(
        "zoo",
        "merge",
        paths[2],
        paths[0],
        paths[1],
        "--json",
        tmp_path / "all.json",
        "--markdown",
        tmp_path / "all.md",
        "--junit",
        tmp_path / "all.xml",
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    merged = json.loads((tmp_path / "all.json").read_text())
    validate(merged)
    assert [m["name"] for m in merged["models"]] == [m["name"] for m in whole["models"]]  # each once, in order
    assert merged["models"] == whole["models"]
    assert abs(merged["score"]["value"] - whole["score"]["value"]) <= 1e-9
    assert merged["score"] == whole["score"]
    assert merged["counts"] == whole["counts"] and merged["passed"]
    assert merged["settings"] == whole["settings"] and merged["shard"] == {"index": 1, "count": 1}
    assert [s["shard"]["index"] for s in merged["merged"]] == [1, 2, 3]
    shards = [json.loads(p.read_text()) for p in paths]
    by_log_sum = math.exp(sum(s["score"]["log_sum"] for s in shards) / sum(s["score"]["models"] for s in shards))
    assert abs(merged["score"]["value"] - by_log_sum) <= 1e-9
    assert (tmp_path / "all.md").read_text().startswith(f"## quake-onnx zoo: S(t) = {whole['score']['value']:.3f}")
    assert "Merged from 3 shard reports" in (tmp_path / "all.md").read_text()
    assert ET.parse(tmp_path / "all.xml").getroot().get("tests") == str(len(whole["models"]))
    assert "PASS: 6 model(s)" in r.stdout and "S(t) = " in r.stdout


def test_merge_of_a_failing_run_fails_like_the_run(sample_zoo, tmp_path):
    whole = copy.deepcopy(sample_zoo["json"])
    whole["models"][1]["status"], whole["models"][1]["reason"] = "error", "broken"
    whole["models"][1]["summary"] = None
    whole["score"] = score(whole["models"], Thresholds(**whole["settings"]["thresholds"]), 0.1)
    r = cli("zoo", "merge", *_save(tmp_path, split(whole, 2)), "--json", tmp_path / "all.json")
    one_line(r, 1, prefix="FAIL: ", contains="1 of 6 models failed")
    assert json.loads((tmp_path / "all.json").read_text())["score"]["within"] == 5


def _edit(report, where, value):
    *path, last = where.split(".")
    for key in path:
        report = report[key]
    report[last] = value


@pytest.mark.parametrize(
    "change, contains",
    [
        (("settings.thresholds.min_cosine", 0.5), "settings.thresholds.min_cosine is 0.5, "),
        (("settings.runs", 7), "settings.runs is 7"),
        (("settings.dims", {"seq": 3}), "settings.dims.seq"),
        (("timeout", 9.0), "timeout 9.0 differs"),
        (("environment.quake_onnx", "0.0.1"), "written by quake_onnx 0.0.1"),
        (("environment.onnxruntime", "1.0.0"), "written by onnxruntime 1.0.0"),
        (("shard.count", 4), "split the zoo differently"),
        (("shard.index", 1), "are both shard 1/3"),
        (("score.log_sum", 3.0), "does not follow from its models"),
        # What changes the optimized models (fresh-user run: merged without a word).
        (("settings.ops", ["gelu"]), "settings.ops is "),
        (("settings.min_elements", 0), "settings.min_elements is 0"),
        (("settings.tune_attention_precision", "float32"), "settings.tune_attention_precision is float32"),
        (("settings.custom_ops_libraries", ["libx.so"]), "settings.custom_ops_libraries"),
    ],
)
def test_merge_refuses_reports_of_different_runs(sample_zoo, tmp_path, change, contains):
    shards = split(sample_zoo["json"], 3)
    _edit(shards[1], *change)
    one_line(cli("zoo", "merge", *_save(tmp_path, shards), "--json", tmp_path / "all.json"), 2, contains=contains)
    assert not (tmp_path / "all.json").exists()


def test_merge_warns_of_shards_run_on_other_zoo_folders(sample_zoo, tmp_path):
    # Fresh-user run: shards of zoo3 and zoo4 merged without a word (the root
    # as given may spell one folder two ways, so a warning, not a refusal).
    shards = split(sample_zoo["json"], 3)
    shards[1]["root"] = "elsewhere/zoo"
    r = cli("zoo", "merge", *_save(tmp_path, shards), "--json", tmp_path / "all.json")
    assert "ran on different zoo folders" in " ".join(r.stderr.split()) and "elsewhere/zoo" in r.stderr


def test_merge_refuses_incomplete_or_foreign_input(sample_zoo, tmp_path):
    shards = split(sample_zoo["json"], 3)
    paths = _save(tmp_path, shards)
    one_line(cli("zoo", "merge", paths[0], paths[2]), 2, contains="shard 2/3 missing")
    other = copy.deepcopy(shards[1])
    other["models"] = other["models"][:1]
    other["score"] = score(other["models"], Thresholds(**other["settings"]["thresholds"]), 0.1)
    p = _save(tmp_path, [other], ["small.json"])[0]
    one_line(cli("zoo", "merge", paths[0], p, paths[2]), 2, contains="come from different zoos")
    twice = copy.deepcopy(shards[1])
    twice["models"][0] = copy.deepcopy(shards[0]["models"][0])
    p = _save(tmp_path, [twice], ["twice.json"])[0]
    one_line(cli("zoo", "merge", paths[0], p, paths[2]), 2, contains="is in both")
    (tmp_path / "junk.json").write_text("{not json")
    one_line(cli("zoo", "merge", tmp_path / "junk.json"), 2, contains="is not JSON")
    (tmp_path / "other.json").write_text('{"a": 1}')
    one_line(cli("zoo", "merge", tmp_path / "other.json"), 2, contains="is not a quake-onnx zoo report")
    older = copy.deepcopy(shards[1])
    older["schema"] = "quake-onnx/zoo-report/1"
    p = _save(tmp_path, [older], ["older.json"])[0]
    one_line(cli("zoo", "merge", paths[0], p, paths[2]), 2, contains="written by another quake-onnx version")
    one_line(cli("zoo", "merge", tmp_path / "none.json"), 2, contains="does not exist")
    one_line(cli("zoo", "merge", *paths, "--json", paths[0]), 2, contains="is a shard report this command merges")
    one_line(cli("zoo", "merge", *paths, "--json", "-", "--junit", "-"), 2, contains="cannot both write to stdout")
    model = sample_zoo["json"]["models"][0]["model"]
    one_line(cli("zoo", "merge", *paths, "--markdown", model), 2, contains="is a model the merged reports checked")
    assert cli("zoo", "merge", "--help").exit_code == 0


@pytest.mark.parametrize(
    "change, contains",
    [
        (("models", None), "models is NoneType, not a list"),
        (("models", "x"), "models is str, not a list"),
        (("models.0", 5), "models[0] is int, not an object"),
        (("models.0.status", "weird"), "models[0].status is 'weird'"),
        (("shard", None), "are not as `quake-onnx zoo --json` writes them"),
        (("score", "x"), "are not as `quake-onnx zoo --json` writes them"),
        (("environment", None), "are not as `quake-onnx zoo --json` writes them"),
    ],
)
def test_merge_of_an_edited_report_is_one_line_not_an_internal_error(sample_zoo, tmp_path, change, contains):
    """A fresh-user run found hand-edited shard reports ending in 'internal
    error (TypeError ...)', exit 1."""
    shards = split(sample_zoo["json"], 3)
    where, value = change
    target = shards[1]
    *path, last = where.split(".")
    for key in path:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    one_line(cli("zoo", "merge", *_save(tmp_path, shards), "--json", tmp_path / "all.json"), 2, contains=contains)
    assert not (tmp_path / "all.json").exists()


# -- the example workflow of docs/zoo.md, run here -------------------------------


def _workflow() -> str:
    doc = (ROOT / "docs" / "zoo.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.DOTALL)
    assert len(blocks) == 1, "docs/zoo.md should hold one yaml block: the example workflow"
    return blocks[0]


def test_the_workflow_of_docs_zoo_md_runs(tmp_path):
    text = _workflow()
    matrix = re.search(r"shard: \[([0-9, ]+)\]", text).group(1)
    shards = [s.strip() for s in matrix.split(",")]
    runs = [line.split("run: ", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("- run: ")]
    commands = [c for c in runs if not c.startswith("pip install")]
    assert len(commands) == 2 and "--shard ${{ matrix.shard }}/" in commands[0]
    assert commands[1].startswith("quake-onnx zoo merge shard-*.json")
    (tmp_path / "sample_models").symlink_to(ROOT / "sample_models")  # the checkout the workflow runs in
    env = dict(
        os.environ,
        GITHUB_STEP_SUMMARY=str(tmp_path / "summary.md"),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    for shard in shards:  # the matrix jobs
        command = commands[0].replace("${{ matrix.shard }}", shard)
        proc = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, check=False, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, (command, proc.stderr)
    proc = subprocess.run(
        ["bash", "-c", commands[1]], cwd=tmp_path, env=env, check=False, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    merged = json.loads((tmp_path / "all.json").read_text())
    validate(merged)
    names = [m["name"] for m in merged["models"]]
    listed = subprocess.run(
        ["bash", "-c", "quake-onnx zoo sample_models/zoo --list"],
        cwd=tmp_path,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert names == [line.split("\t")[0] for line in listed.stdout.splitlines()]  # every model once, in order
    parts = [json.loads((tmp_path / f"shard-{s}.json").read_text()) for s in shards]
    by_log_sum = math.exp(sum(p["score"]["log_sum"] for p in parts) / sum(p["score"]["models"] for p in parts))
    assert abs(merged["score"]["value"] - by_log_sum) <= 1e-9
    assert (tmp_path / "summary.md").read_text().startswith("## quake-onnx zoo: S(t) = ")
    assert ET.parse(tmp_path / "all.xml").getroot().get("tests") == str(len(names))


def test_merge_from_another_folder_never_writes_over_a_listed_model(tmp_path, monkeypatch):
    """Shards store their models' paths relative to the folder they ran in; a
    merge run elsewhere (CI's merge job) resolved them against its own folder
    and wrote --json over ../zoo/a.onnx (fresh-user run)."""
    import onnx
    from onnx import TensorProto, helper

    (tmp_path / "zoo").mkdir()
    (tmp_path / "ci").mkdir()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 256])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 256])
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"])], "g", [x], [y])
    for name in ("a", "b"):
        onnx.save(
            helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "zoo" / f"{name}.onnx"
        )
    monkeypatch.chdir(tmp_path)
    for i in (1, 2):
        r = cli("zoo", "zoo", "--shard", f"{i}/2", "--runs", "1", "--warmup", "0", "--json", f"ci/shard-{i}.json")
        assert r.exit_code == 0, r.stderr
    before = (tmp_path / "zoo" / "a.onnx").read_bytes()
    monkeypatch.chdir(tmp_path / "ci")
    line = one_line(cli("zoo", "merge", "shard-1.json", "shard-2.json", "--json", "../zoo/a.onnx"), 2)
    assert "is a model the merged reports checked" in line
    assert (tmp_path / "zoo" / "a.onnx").read_bytes() == before
