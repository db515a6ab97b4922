"""The attention fusion on model fragments in the exporters' patterns (BERT,
GPT-2, Whisper encoder, Llama with GQA and a KV cache, ViT), through
quake_onnx.optimize: fusions per rule, outputs, and ONNX Runtime's graphs
of the result: every fusion ORT makes on the per-op rewrite it still makes
with the attention fused; what differs is the attention block alone."""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import quake_onnx
from quake_onnx.rewrite import ALL_OPS, rewrite_model
from quake_onnx.schemas import register_schemas

from .attention_models import FRAGMENTS
from .builders import op_types, run

# What ORT makes of an unfused attention block (the block's MatMuls, scale, mask, Softmax, the K/V head
# repeat) and so what may differ between its graphs of the per-op rewrite and of the fused one.
BLOCK_OPS = {
    "MatMul",
    "com.microsoft.FusedMatMul",
    "Add",
    "Mul",
    "Div",
    "Where",
    "Softmax",
    "com.quake.Softmax",
    "Cast",
    "Transpose",
    "Unsqueeze",
    "Expand",
    "Tile",
    "Reshape",
    # A causal mask computed at run time (decoder exports) goes with its block.
    "Range",
    "LessOrEqual",
    "Shape",
    "Gather",
    "Concat",
    "ConstantOfShape",
    "Equal",
}
# ORT's fusions that must survive.
FUSIONS = {
    "Gemm",
    "LayerNormalization",
    "com.microsoft.SkipLayerNormalization",
    "com.microsoft.FusedGemm",
    "com.microsoft.BiasGelu",
    "com.microsoft.FastGelu",
    "com.microsoft.Gelu",
    "com.microsoft.QuickGelu",
    "com.microsoft.BiasSoftmax",
}


def ort_types(model: onnx.ModelProto) -> collections.Counter:
    """Node types of ONNX Runtime's optimised graph (ORT_ENABLE_EXTENDED, as the optimizer's oracle)."""
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(Path(tmp) / "ort.onnx")
        so.register_custom_ops_library(quake_onnx.get_library_path())
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        optimized = onnx.load(so.optimized_model_filepath)
    return collections.Counter(op_types(optimized))


@pytest.fixture(scope="module", params=sorted(FRAGMENTS))
def fragment(request):
    model, feeds, blocks = FRAGMENTS[request.param]()
    fused, report = quake_onnx.optimize(model, min_elements=0)
    per_op, _ = quake_onnx.optimize(model, min_elements=0, ops=ALL_OPS - {"attention"})
    return request.param, model, feeds, blocks, fused, report, per_op


def test_every_block_is_fused(fragment):
    name, model, feeds, blocks, fused, report, _ = fragment
    decisions = [d for d in report.decisions if d.rule == "attention"]
    assert len(decisions) == blocks and all(d.replaced for d in decisions), decisions
    assert report.counts()["attention"] == blocks
    assert op_types(fused).count("com.quake.Attention") == blocks
    assert not {"Softmax", "com.quake.Softmax"} & set(op_types(fused))
    register_schemas()
    onnx.checker.check_model(fused, full_check=True)
    again, second = rewrite_model(fused)
    assert not second.replaced and again.SerializeToString() == fused.SerializeToString()


def test_outputs_match_the_original(fragment):
    name, model, feeds, _, fused, _, per_op = fragment
    for want, got, per in zip(run(model, feeds), run(fused, feeds), run(per_op, feeds)):
        scale = float(np.abs(want).max())
        # Whole fragments: the op's 2e-3 x max|V| per block, carried through projections and norms.
        assert np.abs(got - want).max() <= 5e-3 * scale, name
        assert np.abs(got - want).max() <= max(4 * np.abs(per - want).max(), 1e-3 * scale), name


def test_ort_makes_its_other_fusions(fragment):
    name, model, _, blocks, fused, _, per_op = fragment
    original, with_attention, without = ort_types(model), ort_types(fused), ort_types(per_op)
    assert with_attention - without == collections.Counter({"com.quake.Attention": blocks}), name
    assert set(without - with_attention) <= BLOCK_OPS, name
    assert {k: v for k, v in with_attention.items() if k in FUSIONS} == {
        k: v for k, v in without.items() if k in FUSIONS
    }
    for norm in ("LayerNormalization", "com.microsoft.SkipLayerNormalization"):
        assert with_attention[norm] == original[norm], (name, norm)
    assert not {"com.microsoft.Attention", "com.microsoft.MultiHeadAttention"} & set(with_attention)
