"""Smoke test of benchmarks/models.py --quick: one tiny BERT exported with
torch, optimized at orders 1-3, timed, profiled and compared.

Needs torch and transformers, which CI does not install: there it is skipped."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "models.py"


@pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ is not beside the tests")
def test_models_quick(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--cache", str(tmp_path / "cache"), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    (row,) = results["speed"]
    assert row["model"] == "tiny-bert" and row["precision"] == "fp32"
    assert set(row["ms"]) == {"o1", "o2", "o3"} and all(v > 0 for v in row["ms"].values())
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
