"""tune's choice of com.quake Attention's precision (issue 16): bfloat16 is a
configuration of its own, tried only where the CPU has a bf16 engine, its
accuracy checked alone first, then timed like the other configurations.
Made-up errors and timings (tunetools.FakeBench) on the GPT-2 decoder sample
(two fused attention blocks)."""

from __future__ import annotations

import onnx
import pytest
from onnx import helper
from tunetools import SAMPLES, FakeBench, FakeClock, validate

import quake_onnx
from quake_onnx.tuning import prepare as prepare_module
from quake_onnx.tuning.report import to_markdown

GPT2 = SAMPLES / "zoo" / "gpt2_decoder" / "model.onnx"


def fake(**kw):
    def make(prep, feeds, threads):
        make.made = FakeBench(prep, **kw)
        return make.made

    return make


def attention_precisions(path) -> list:
    """The precision attribute of every com.quake Attention node ("float32" when absent)."""
    out = []
    for n in onnx.load(path).graph.node:
        if n.domain == "com.quake" and n.op_type == "Attention":
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            out.append(attrs.get("precision", b"float32").decode())
    return out


def attention_groups(report: dict) -> list:
    return [g for g in report["groups"] if g["rule"] in ("attention", "mha", "onnx_attention")]


@pytest.fixture
def engine(monkeypatch):
    """This CPU has a bf16 engine, whatever the machine running the test."""
    monkeypatch.setattr(prepare_module, "bf16_engine", lambda: "AVX512-BF16")


def faster_in_bf16(group, choice, config):
    if group.attention:
        return 0.5 if config.bf16 else 0.7
    return 0.95


def test_bf16_chosen_when_faster_and_within_tolerance(engine, tmp_path):
    out = tmp_path / "gpt2.onnx"
    make = fake(factor=faster_in_bf16, bf16_deficit=lambda g, c: 2e-5)  # within 1e-4 (cosine 0.9999)
    _, report = quake_onnx.tune(GPT2, out, bench=make, clock=FakeClock())
    validate(report)
    assert report["configuration"] == {
        "ort_level": "extended",
        "attention": True,
        "attention_precision": "bfloat16",
        "glu": None,
    }
    assert attention_precisions(out) == ["bfloat16", "bfloat16"]
    for g in attention_groups(report):
        assert g["decision"] == "replaced" and g["precision"] == "bfloat16"
        assert g["reason"] == f"replaced (order {g['choice']['order']}, bfloat16)"
        trial = g["tried"][-1]  # after the orders: bfloat16 at the group's order
        assert trial["precision"] == "bfloat16" and trial["within"] and trial["choice"] == g["choice"]
        assert [t["precision"] for t in g["tried"][:-1]] == ["float32"] * (len(g["tried"]) - 1)
    assert all(g["precision"] is None for g in report["groups"] if g not in attention_groups(report))
    nodes = [n for n in report["nodes"] if n["op_type"] == "Softmax" and n["rule"] == "attention"]
    assert nodes and all(n["precision"] == "bfloat16" for n in nodes)
    by_precision = {c["attention_precision"]: c for c in report["configurations"]}
    assert set(by_precision) == {None, "float32", "bfloat16"}
    assert by_precision["bfloat16"]["status"] == "measured"
    assert by_precision["bfloat16"]["speedup"]["median"] > by_precision["float32"]["speedup"]["median"]
    assert any(
        "bfloat16: in the search (measured like the others, within the budget), run here by AVX512-BF16" in n
        for n in report["notes"]
    )
    md = to_markdown(report)
    assert "attention fused (bfloat16)" in md and "order 1, bfloat16" in md
    # Review: tune's Markdown wrote names raw; a | broke its table and <b> read as a tag.
    report["model"] = "a<b>.onnx"
    report["groups"][0]["reason"] = "x | <y>"
    md = to_markdown(report)
    assert "## quake-onnx tune: a&lt;b&gt;.onnx" in md and "x \\| &lt;y&gt;" in md


def test_bf16_not_chosen_when_its_error_breaks_the_tolerance(engine, tmp_path):
    out = tmp_path / "gpt2.onnx"
    make = fake(factor=faster_in_bf16, bf16_deficit=lambda g, c: 1e-3)  # faster, but 1 - cosine 1e-3 > 1e-4
    _, report = quake_onnx.tune(GPT2, out, bench=make, clock=FakeClock())
    validate(report)
    assert report["configuration"]["attention"] is True
    assert report["configuration"]["attention_precision"] == "float32"
    assert attention_precisions(out) == ["float32", "float32"]
    for g in attention_groups(report):
        assert g["precision"] == "float32"
        assert g["tried"][-1]["precision"] == "bfloat16" and not g["tried"][-1]["within"]
    (bf16,) = [c for c in report["configurations"] if c["attention_precision"] == "bfloat16"]
    assert bf16["status"] == "nothing to replace" and "bfloat16" in bf16["reason"] and bf16["speedup"] is None
    # its accuracy alone was measured, never its speed
    timed = [v for call in make.made.calls if call[0] == "paired" for v in call[1:]]
    assert timed and not any(v.config is not None and v.config.bf16 for v in timed)


def test_bf16_never_tried_on_the_float32_fallback(monkeypatch, tmp_path):
    monkeypatch.setenv("QUAKE_ISA", "scalar")  # the scalar table has no bf16 engine: the float32 fallback
    assert prepare_module.bf16_engine() is None
    make = fake(factor=faster_in_bf16)
    _, report = quake_onnx.tune(GPT2, tmp_path / "gpt2.onnx", bench=make, clock=FakeClock())
    validate(report)
    assert [c["attention_precision"] for c in report["configurations"]] == [None, "float32"]
    assert report["configuration"]["attention_precision"] == "float32"
    assert not any(v.config is not None and v.config.bf16 for call in make.made.calls for v in call[1:])
    assert all(t["precision"] == "float32" for g in attention_groups(report) for t in g["tried"])
    assert any("bfloat16: not tried" in n and "float32 fallback" in n for n in report["notes"])
    assert attention_precisions(tmp_path / "gpt2.onnx") == ["float32", "float32"]


# ---------------------------------------------------------------------- attention_precision: the user's choice


def configuration_precisions(report: dict) -> set:
    return {c["attention_precision"] for c in report["configurations"]}


def bf16_built(make) -> bool:
    """Whether the search built any variant in a bfloat16 configuration."""
    return any(v.config is not None and v.config.bf16 for call in make.made.calls for v in call[1:])


def test_float32_never_tries_bf16(engine, tmp_path):
    out = tmp_path / "gpt2.onnx"
    make = fake(factor=faster_in_bf16, bf16_deficit=lambda g, c: 2e-5)  # bfloat16 would win under auto
    _, report = quake_onnx.tune(GPT2, out, bench=make, clock=FakeClock(), attention_precision="float32")
    validate(report)
    assert report["attention_precision"] == {"option": "float32", "engine": "AVX512-BF16"}
    assert configuration_precisions(report) == {None, "float32"}
    assert report["configuration"]["attention_precision"] == "float32"
    assert not bf16_built(make)
    assert all(t["precision"] == "float32" for g in attention_groups(report) for t in g["tried"])
    assert attention_precisions(out) == ["float32", "float32"]
    assert any("bfloat16: not tried, float32 asked for" in n for n in report["notes"])


def test_bfloat16_fuses_attention_only_at_bf16(engine, tmp_path):
    out = tmp_path / "gpt2.onnx"
    make = fake(factor=lambda g, c, cfg: 0.7 if g.attention else 0.95, bf16_deficit=lambda g, c: 2e-5)
    _, report = quake_onnx.tune(GPT2, out, bench=make, clock=FakeClock(), attention_precision="bfloat16")
    validate(report)
    assert report["attention_precision"] == {"option": "bfloat16", "engine": "AVX512-BF16"}
    assert configuration_precisions(report) == {None, "bfloat16"}
    assert report["configuration"]["attention_precision"] == "bfloat16"
    assert attention_precisions(out) == ["bfloat16", "bfloat16"]
    for g in attention_groups(report):
        # its orders tried at bfloat16, no separate bfloat16 trial after them
        assert [t["precision"] for t in g["tried"]] == ["bfloat16"] * len(g["tried"])
        assert g["tried"][-1]["within"] and g["tried"][-1]["choice"] == g["choice"]
        assert g["reason"] == f"replaced (order {g['choice']['order']}, bfloat16)"
    assert any("bfloat16 as asked" in n and "AVX512-BF16" in n for n in report["notes"])
    assert "Attention precision bfloat16 (bf16 engine AVX512-BF16)" in to_markdown(report)


def test_bfloat16_outside_the_tolerance_leaves_attention_unfused(engine, tmp_path):
    out = tmp_path / "gpt2.onnx"
    make = fake(factor=lambda g, c, cfg: 0.7 if g.attention else 0.95, bf16_deficit=lambda g, c: 1e-3)
    _, report = quake_onnx.tune(GPT2, out, bench=make, clock=FakeClock(), attention_precision="bfloat16")
    validate(report)
    assert configuration_precisions(report) == {None, "bfloat16"}
    assert attention_precisions(out) == []  # never fused at float32 instead
    assert report["configuration"] is None or report["configuration"]["attention"] is False
    for g in attention_groups(report):
        assert g["decision"] == "kept" and "order 3 (bfloat16) it misses the tolerance" in g["reason"]
        assert [t["precision"] for t in g["tried"]] == ["bfloat16"] * 3
    (bf16,) = [c for c in report["configurations"] if c["attention_precision"] == "bfloat16"]
    assert bf16["status"] == "nothing to replace" and bf16["speedup"] is None


def test_bfloat16_on_the_float32_fallback_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("QUAKE_ISA", "scalar")  # no bf16 engine: asked for all the same, run by the fallback
    assert prepare_module.bf16_engine() is None
    out = tmp_path / "gpt2.onnx"
    make = fake(factor=lambda g, c, cfg: 0.7 if g.attention else 0.95)
    _, report = quake_onnx.tune(GPT2, out, bench=make, clock=FakeClock(), attention_precision="bfloat16")
    validate(report)
    assert report["attention_precision"] == {"option": "bfloat16", "engine": None}
    assert configuration_precisions(report) == {None, "bfloat16"}
    assert attention_precisions(out) == ["bfloat16", "bfloat16"]
    (note,) = [n for n in report["notes"] if "bfloat16" in n]
    assert "no bf16 engine" in note and "float32 fallback" in note and "\n" not in note


@pytest.mark.parametrize("precision, bf16", [("auto", True), ("float32", False)])
def test_on_this_cpu(tmp_path, precision, bf16):
    """This machine's own engine, no stand-in: auto tries and here chooses bfloat16, float32 never does."""
    engine = prepare_module.bf16_engine()
    if engine is None:
        pytest.skip("this CPU has no bf16 engine (com.quake Attention runs bfloat16 by its float32 fallback)")
    out = tmp_path / "gpt2.onnx"
    make = fake(factor=faster_in_bf16, bf16_deficit=lambda g, c: 2e-5)
    _, report = quake_onnx.tune(GPT2, out, bench=make, clock=FakeClock(), attention_precision=precision)
    validate(report)
    assert report["attention_precision"] == {"option": precision, "engine": engine}
    assert ("bfloat16" in configuration_precisions(report)) is bf16
    assert bf16_built(make) is bf16
    assert attention_precisions(out) == (["bfloat16"] * 2 if bf16 else ["float32"] * 2)


@pytest.mark.parametrize("value", ["bf16", "", None, "Float32"])
def test_a_bad_precision(value, tmp_path):
    with pytest.raises(quake_onnx.tuning.TuneError) as e:
        quake_onnx.tune(GPT2, tmp_path / "out.onnx", bench=fake(), clock=FakeClock(), attention_precision=value)
    assert e.value.exit_code == 2 and "attention_precision must be one of auto, float32, bfloat16" in str(e.value)
    assert not (tmp_path / "out.onnx").exists()
