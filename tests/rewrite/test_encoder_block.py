"""The bundled sample model: the pass must reproduce encoder_block.quake.onnx from encoder_block.onnx."""
from pathlib import Path

import numpy as np
import onnx
import pytest

from .builders import check_rewrite, op_types, run, sample

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"


@pytest.fixture(scope="module")
def models():
    return onnx.load(SAMPLES / "encoder_block.onnx"), onnx.load(SAMPLES / "encoder_block.quake.onnx")


def test_encoder_block(models):
    model, expected = models
    mask = np.zeros((1, 1, 64, 64), np.float32)
    mask[..., 48:] = -np.inf  # padded keys
    feeds = {"X": sample((1, 64, 128), scale=1.0), "MASK": mask}
    # Three replaced non-linearities feed MatMuls and residual adds, so the bound is
    # the per-op budget grown through the block, not an elementwise one.
    out, report = check_rewrite(model, op_types(expected), feeds, atol=1e-2)
    assert {d.rule: d.reason for d in report.decisions} == {
        "softmax": "replaced by com.quake Softmax",
        "gelu": "replaced by com.quake Gelu (approximate=none, bias fused)",
        "silu": "replaced by com.quake Silu (alpha=1)",
    }
    # The hand-written target and the rewrite are the same computation.
    np.testing.assert_array_equal(run(out, feeds)[0], run(expected, feeds)[0])
