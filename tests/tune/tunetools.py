"""Shared by the tests of `quake-onnx tune`: small models, a bench with
made-up errors and timings (deterministic), a clock it advances, the report
schema, and the CLI in-process."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from quake_onnx.check.paired import Paired
from quake_onnx.cli import app
from quake_onnx.tuning.space import Variant

ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLES = ROOT / "sample_models"
SCHEMA = json.loads((ROOT / "quake_onnx" / "check" / "tune-report.schema.json").read_text())
sys.path.insert(0, str(ROOT / "tests" / "checks"))
sys.path.insert(0, str(ROOT / "tests" / "cli"))
from checktools import validate as _validate  # noqa: E402
from clitools import assert_one_line_error  # noqa: E402, F401  (re-exported for the tune tests)

_runner = CliRunner()

# The round-to-round spread of every made-up comparison: ratios r * these.
SPREAD = (0.99, 1.0, 1.01, 0.995, 1.005, 0.998, 1.002, 1.0)


def cli(*args: object):
    result = _runner.invoke(app, [str(a) for a in args], prog_name="quake-onnx")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def validate(report: dict) -> None:
    _validate(report, SCHEMA)


def two_groups_model(path: Optional[Path] = None, external: bool = False) -> onnx.ModelProto:
    """X [8, 512] -> SiLU (x * Sigmoid(x)) -> Softmax (Y), and the SiLU
    reshaped to [16, 256] -> Softmax (Z): three groups (silu [8, 512], softmax
    [8, 512], softmax [16, 256]), each above the 2048-element break-even.
    With `external`, X comes from a MatMul by a 512 x 512 weight (2 I, 1 MiB: tune sets
    it aside while it rewrites) kept in an external data file."""
    nodes = [
        helper.make_node("Sigmoid", ["X"], ["sig"], name="sig"),
        helper.make_node("Mul", ["X", "sig"], ["h"], name="silu_mul"),
        helper.make_node("Softmax", ["h"], ["Y"], name="softmax_a", axis=-1),
        helper.make_node("Reshape", ["h", "shape"], ["r"], name="reshape"),
        helper.make_node("Softmax", ["r"], ["Z"], name="softmax_b", axis=-1),
    ]
    inits = [numpy_helper.from_array(np.array([16, 256], np.int64), "shape")]
    x = "X"
    if external:
        nodes.insert(0, helper.make_node("MatMul", ["X0", "W"], ["X"], name="scale"))
        inits.append(numpy_helper.from_array(np.eye(512, dtype=np.float32) * 2.0, "W"))
        x = "X0"
    graph = helper.make_graph(
        nodes,
        "two_groups",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [8, 512])],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, [8, 512]),
            helper.make_tensor_value_info("Z", TensorProto.FLOAT, [16, 256]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if path is not None:
        if external:
            onnx.save_model(
                model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=1024
            )
        else:
            onnx.save_model(model, str(path))
    return model


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def output(name: str, deficit: float) -> dict:
    """An output dict as check's compare writes it, with cosine 1 - deficit."""
    return {
        "name": name,
        "shape": [8, 512],
        "dtype": "float32",
        "max_abs_error": 10 * deficit,
        "max_rel_error": 10 * deficit,
        "cosine": 1.0 - deficit,
        "nonfinite_mismatch": 0,
        "scores": False,
        "top1_agreement": None,
        "topk_agreement": None,
        "k": None,
        "rows": None,
    }


class FakeBench:
    """Errors and timings made up from a variant's picks: each group adds
    `deficit(group, choice)` to 1 - cosine (summed over groups), a fused
    attention group in a bfloat16 configuration `bf16_deficit(group, choice)`
    more, and multiplies the model's time by `factor(group, choice, config)`.
    Every call advances `clock` by its cost."""

    def __init__(
        self,
        prep,
        *,
        deficit: Callable = lambda group, choice: 1e-6,
        bf16_deficit: Callable = lambda group, choice: 0.0,
        factor: Callable = lambda group, choice, config: 0.9,
        clock: Optional[FakeClock] = None,
        cost_errors: float = 1.0,
        cost_paired: float = 5.0,
    ):
        self.prep = prep
        self.deficit = deficit
        self.bf16_deficit = bf16_deficit
        self.factor = factor
        self.clock = clock
        self._cost_errors = cost_errors
        self._cost_paired = cost_paired
        self.calls: list = []

    def _advance(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.now += seconds

    def time(self, variant: Variant) -> float:
        t = 1.0
        for key, choice in variant.picks:
            t *= self.factor(self.prep.group(key), choice, variant.config)
        return t

    def errors(self, variant: Variant) -> list:
        self._advance(self._cost_errors)
        self.calls.append(("errors", variant))
        d = 0.0
        for k, c in variant.picks:
            g = self.prep.group(k)
            d += self.deficit(g, c) + (self.bf16_deficit(g, c) if variant.config.bf16 and g.attention else 0.0)
        return [output("Y", d), output("Z", d / 2)]

    def paired(self, base: Variant, variant: Variant) -> Paired:
        self._advance(self._cost_paired)
        self.calls.append(("paired", base, variant))
        r = self.time(base) / self.time(variant)
        return Paired(tuple(r * s for s in SPREAD))

    def cost_errors(self, variant) -> float:
        return self._cost_errors

    def cost_paired(self, base, variant) -> float:
        return self._cost_paired
