"""The bundled sample model: the pass must reproduce encoder_block.quake.onnx from encoder_block.onnx."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from quake_onnx.rewrite import ALL_OPS

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
    # The sample is the per-op rewrite's target; the attention fusion is tested below.
    out, report = check_rewrite(model, op_types(expected), feeds, atol=1e-2, ops=ALL_OPS - {"attention"})
    assert {d.rule: d.reason for d in report.decisions} == {
        "attention": "attention is not among the selected ops",
        "softmax": "replaced by com.quake Softmax",
        "gelu": "replaced by com.quake Gelu (approximate=none, bias fused)",
        "silu": "replaced by com.quake Silu (alpha=1)",
    }
    # The hand-written target and the rewrite are the same computation.
    np.testing.assert_array_equal(run(out, feeds)[0], run(expected, feeds)[0])


def test_encoder_block_with_attention_fused(models):
    # By default the attention block (K given as [B, H, D, S]) becomes one com.quake Attention.
    model, _ = models
    mask = np.zeros((1, 1, 64, 64), np.float32)
    mask[..., 48:] = -np.inf
    feeds = {"X": sample((1, 64, 128), scale=1.0), "MASK": mask}
    expected = ["MatMul", "Reshape", "Transpose"] * 3 + [
        "com.quake.Attention",
        "Transpose",
        "Reshape",
        "MatMul",
        "Add",
        "MatMul",
        "com.quake.Gelu",
        "MatMul",
        "com.quake.Silu",
        "Add",
    ]
    _, report = check_rewrite(model, expected, feeds, atol=1e-2)
    assert [d.reason for d in report.decisions][
        0
    ] == "replaced by com.quake Attention (scale=0.176777, k_transposed, mask)"
