"""The reports of one zoo run over sample_models/: schema, JUnit, Markdown, table."""

import copy
import math
import xml.etree.ElementTree as ET

import pytest
from checktools import SCHEMA, ZOO, validate

SAMPLE_NAMES = {"encoder_block"} | {f"zoo/{p.name}" for p in ZOO.iterdir() if (p / "model.onnx").is_file()}


def test_every_sample_model_is_checked_and_passes(sample_zoo):
    report = sample_zoo["json"]
    assert {m["name"] for m in report["models"]} == SAMPLE_NAMES
    assert len(SAMPLE_NAMES) == 6  # encoder_block + the five zoo models (encoder_block.quake.onnx is skipped)
    assert report["passed"] and report["counts"] == {"pass": 6, "fail": 0, "error": 0, "timeout": 0, "skipped": 0}
    for m in report["models"]:
        assert m["status"] == "pass" and m["accurate"], m
        assert m["timing"]["runs"] == 3 and m["timing"]["speedup"] > 0


def test_json_report_matches_the_schema(sample_zoo):
    validate(sample_zoo["json"])


@pytest.mark.parametrize(
    "breakage",
    [
        lambda r: r.pop("score"),
        lambda r: r["models"][0].update(status="passed"),
        lambda r: r["models"][0]["outputs"][0].update(cosine=float("nan")),
        lambda r: r["models"][0]["timing"].pop("speedup"),
        lambda r: r["models"][0].update(surprise=1),
        lambda r: r["counts"].update(fail=-1),
    ],
)
def test_schema_check_rejects_broken_reports(sample_zoo, breakage):
    report = copy.deepcopy(sample_zoo["json"])
    breakage(report)
    with pytest.raises(AssertionError):
        validate(report)


def test_zoo_layout_models_use_their_data_sets(sample_zoo):
    models = {m["name"]: m for m in sample_zoo["json"]["models"]}
    bert = models["zoo/bert_encoder"]
    assert bert["inputs"]["source"] == "test_data_set"
    assert bert["inputs"]["shapes"] == {"input_ids": [2, 32], "attention_mask": [2, 32]}
    for out in bert["outputs"]:
        # the recorded outputs are ORT's own: the original reproduces them
        assert out["expected"]["original_matches"] and out["expected"]["original_max_abs_error"] < 1e-4
    logits = next(o for o in bert["outputs"] if o["name"] == "logits")
    assert logits["scores"] and logits["k"] == 5 and logits["rows"] == 2
    hidden = next(o for o in bert["outputs"] if o["name"] == "last_hidden_state")
    assert not hidden["scores"] and hidden["top1_agreement"] is None
    gpt2 = next(o for o in models["zoo/gpt2_decoder"]["outputs"])
    assert gpt2["scores"] and gpt2["rows"] == 32  # one row per token
    assert models["encoder_block"]["inputs"]["source"] == "generated"
    assert models["zoo/bert_encoder"]["optimized"]["replaced"] > 0


def test_score_is_the_geometric_mean_speedup_when_all_are_within(sample_zoo):
    report = sample_zoo["json"]
    score = report["score"]
    speedups = [m["timing"]["speedup"] for m in report["models"]]
    geo = math.exp(sum(map(math.log, speedups)) / len(speedups))
    assert score["within"] == score["models"] == 6
    assert score["value"] == pytest.approx(geo, rel=1e-12)
    assert score["tolerance"]["max_abs_error"] == 0.05
    values = [c["value"] for c in score["curve"]]
    assert values == sorted(values, reverse=True)  # tighter tolerance never raises the score


def test_junit_has_one_passing_testcase_per_model(sample_zoo):
    root = ET.parse(sample_zoo["junit"]).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "6" and root.get("failures") == "0"
    cases = root.findall("./testsuite/testcase")
    assert {c.get("name") for c in cases} == SAMPLE_NAMES
    assert all(c.find("failure") is None for c in cases)
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert float(props["score"]) == pytest.approx(sample_zoo["json"]["score"]["value"], abs=1e-4)


def test_markdown_has_the_score_and_a_row_per_model(sample_zoo):
    md = sample_zoo["markdown"]
    assert md.startswith(f"## quake-onnx zoo: S(t) = {sample_zoo['json']['score']['value']:.3f} (passed)")
    rows = [line for line in md.splitlines() if line.startswith("| ") and "pass" in line]
    assert {r.split(" | ")[0][2:] for r in rows} == SAMPLE_NAMES
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    assert all(len(r.split(" | ")) == len(header.split(" | ")) for r in rows)


def test_terminal_summary(sample_zoo):
    out = sample_zoo["result"].stdout
    assert "S(t) = " in out and "PASS: 6 model(s)" in out
    assert all(name in out for name in SAMPLE_NAMES)
    assert "[6/6]" in sample_zoo["result"].stderr  # one progress line per model outside a terminal


def test_schema_is_valid_json_schema():
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
