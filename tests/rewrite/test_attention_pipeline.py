"""The attention fusion as a stage of quake_onnx.optimize: the measured
break-even and --min-elements, --ops, the ORT oracle's kept Softmax, and the
CLI's --explain."""

from __future__ import annotations

import sys

import onnx
import pytest
from onnx import helper

import quake_onnx
import quake_onnx._library
from quake_onnx.rewrite.engine import (
    ATTENTION_KEYS,
    BF16_ATTENTION_BREAK_EVEN,
    BREAK_EVEN,
    CAUSAL_ATTENTION,
    UNMASKED_ATTENTION,
    one_attention_floor,
)

from .attention_forms import block
from .builders import op_types
from .test_attention_ops import mha, onnx_attention

oracle_module = sys.modules["quake_onnx.pipeline.oracle"]


def big_block():
    """A block at the break-even: H12 S1024, 12582912 score elements."""
    return block(b=1, h=12, sq=1024, d=64, mask="add")[0]


def small_block():
    return block(b=1, h=2, sq=16, d=8, mask="add")[0]  # 512 score elements


def attention_decision(report):
    (d,) = [d for d in report.decisions if d.rule == "attention"]
    return d


def test_break_even_leaves_small_blocks_to_the_per_op_rewrite():
    out, report = quake_onnx.optimize(small_block(), ort_fusions=False)
    d = attention_decision(report)
    floor = BREAK_EVEN["attention"]
    assert (
        not d.replaced
        and d.reason == f"512 score elements: below the {floor}-element break-even of the fused attention"
    )
    assert "com.quake.Attention" not in op_types(out)


def test_above_the_break_even_the_block_is_fused():
    out, report = quake_onnx.optimize(big_block(), ort_fusions=False)
    assert attention_decision(report).replaced and op_types(out) == ["com.quake.Attention"]
    assert BREAK_EVEN["attention"] <= 12 * 1024 * 1024


def test_blocks_without_a_mask_have_their_own_break_even():
    # H4 S2048: above the masked floor, below the unmasked one (the per-op graph has no Add pass to lose).
    floor = BREAK_EVEN["attention_unmasked"]
    h, sq = 4, 2048
    assert BREAK_EVEN["attention"] <= h * sq * sq < floor
    unmasked = block(b=1, h=h, sq=sq, d=8)[0]
    out, report = quake_onnx.optimize(unmasked, ort_fusions=False)
    assert "com.quake.Attention" not in op_types(out)
    assert attention_decision(report).reason == (
        f"{h * sq * sq} score elements: below the {floor}-element break-even of the fused attention without a mask"
    )
    masked = block(b=1, h=h, sq=sq, d=8, mask="add")[0]
    assert op_types(quake_onnx.optimize(masked, ort_fusions=False)[0]) == ["com.quake.Attention"]
    # An explicit floor is one floor for both.
    assert op_types(quake_onnx.optimize(unmasked, ort_fusions=False, min_elements=h * sq * sq)[0]) == [
        "com.quake.Attention"
    ]
    above = block(b=1, h=h, sq=sq, skv=-(-floor // (h * sq)), d=8)[0]
    assert op_types(quake_onnx.optimize(above, ort_fusions=False)[0]) == ["com.quake.Attention"]


def test_one_attention_floor_serves_blocks_with_and_without_a_mask():
    # bfloat16's floor and tune's 0 (attention measured): blocks without a mask fall back to it.
    floors = one_attention_floor(BREAK_EVEN, 0)
    assert floors["attention"] == 0 and not set(ATTENTION_KEYS) & set(floors)
    assert {k: v for k, v in floors.items() if k != "attention"} == {
        k: v for k, v in BREAK_EVEN.items() if k not in ("attention", *ATTENTION_KEYS)
    }
    assert set(ATTENTION_KEYS) <= set(BREAK_EVEN)  # the argument is left as it was


def test_causal_blocks_have_their_own_break_even():
    # A prefill's causal block pays from H12 S96, far below the masked floor.
    floor = BREAK_EVEN[CAUSAL_ATTENTION]
    assert floor == 12 * 96 * 96 < BREAK_EVEN["attention"]
    out, report = quake_onnx.optimize(block(b=1, h=12, sq=96, d=8, mask="causal_add")[0], ort_fusions=False)
    assert op_types(out) == ["com.quake.Attention"]
    out, report = quake_onnx.optimize(block(b=1, h=12, sq=64, d=8, mask="causal_add")[0], ort_fusions=False)
    assert "com.quake.Attention" not in op_types(out)
    assert attention_decision(report).reason == (
        f"{12 * 64 * 64} score elements: below the {floor}-element break-even of the fused attention (causal)"
    )


def test_onnx_attention_nodes_take_the_floor_of_their_mask():
    # B2 H4 S2048: above the masked floor, below the unmasked one. ORT's own Attention kernel is
    # the alternative: without a mask it beats the fused op up to S1024 at 2 threads.
    size = 2 * 4 * 2048 * 2048
    assert BREAK_EVEN["attention"] <= size < BREAK_EVEN[UNMASKED_ATTENTION]
    unmasked, _ = onnx_attention(q_heads=4, kv_heads=4, sq=2048, skv=2048)
    out, report = quake_onnx.optimize(unmasked, ort_fusions=False)
    assert op_types(out) == ["Attention"]
    (d,) = [d for d in report.decisions if d.rule == "onnx_attention"]
    assert d.reason.endswith("break-even of the fused attention without a mask") and str(size) in d.reason
    masked, _ = onnx_attention(q_heads=4, kv_heads=4, sq=2048, skv=2048, mask="bool")
    assert "com.quake.Attention" in op_types(quake_onnx.optimize(masked, ort_fusions=False)[0])
    # Between the causal and the masked floors: held to the masked one (no suffix).
    small, _ = onnx_attention(q_heads=4, kv_heads=4, sq=512, skv=512, mask="float")
    (d,) = [d for d in quake_onnx.optimize(small, ort_fusions=False)[1].decisions if d.rule == "onnx_attention"]
    assert d.reason.endswith(f"below the {BREAK_EVEN['attention']}-element break-even of the fused attention")
    causal, _ = onnx_attention(q_heads=4, kv_heads=4, sq=64, skv=64, is_causal=1)
    (d,) = [d for d in quake_onnx.optimize(causal, ort_fusions=False)[1].decisions if d.rule == "onnx_attention"]
    assert d.reason.endswith("break-even of the fused attention (causal)")


def test_min_elements_zero_fuses_every_block():
    out, report = quake_onnx.optimize(small_block(), ort_fusions=False, min_elements=0)
    assert op_types(out) == ["com.quake.Attention"]
    out, report = quake_onnx.optimize(small_block(), ort_fusions=False, min_elements=513)
    assert "com.quake.Attention" not in op_types(out)
    assert attention_decision(report).reason.startswith("512 score elements: below the 513-element")


def test_ops_without_attention():
    out, report = quake_onnx.optimize(big_block(), ort_fusions=False, ops="softmax,gelu")
    assert attention_decision(report).reason == "attention is not among the selected ops"
    assert "com.quake.Softmax" in op_types(out)
    out, _ = quake_onnx.optimize(big_block(), ort_fusions=False, ops="attention")
    assert op_types(out) == ["com.quake.Attention"]


def test_decisions_come_in_stage_order():
    _, report = quake_onnx.optimize(small_block(), ort_fusions=False, min_elements=1000)
    assert [d.rule for d in report.decisions] == ["attention", "softmax"]
    assert report.decisions[1].replaced is False or report.decisions[1].reason.startswith("replaced")


def _fake_ort(model, src, work, external, level, libraries):
    """ORT's graph as it would be had it fused the block into com.microsoft.Attention."""
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    del fused.graph.node[:]
    fused.graph.node.append(
        helper.make_node(
            "Attention", ["Q", "K", "V", "M"], [model.graph.output[0].name], name="Attention_0", domain="com.microsoft"
        )
    )
    return fused


def test_our_fusion_wins_over_ort_attention(monkeypatch):
    # The oracle would keep the Softmax for ORT's com.microsoft.Attention (unfused on the CPU):
    # above the break-even the block becomes com.quake Attention all the same.
    monkeypatch.setattr(oracle_module, "ort_optimized", _fake_ort)
    out, report = quake_onnx.optimize(big_block())
    assert op_types(out) == ["com.quake.Attention"] and attention_decision(report).replaced


def test_below_the_break_even_ort_keeps_its_attention(monkeypatch):
    monkeypatch.setattr(oracle_module, "ort_optimized", _fake_ort)
    out, report = quake_onnx.optimize(small_block())
    assert "Softmax" in op_types(out)
    (softmax,) = [d for d in report.decisions if d.rule == "softmax"]
    assert softmax.reason == "kept: ONNX Runtime fuses it into com.microsoft.Attention"


def test_cli_explain_and_help(tmp_path):
    from typer.testing import CliRunner

    from quake_onnx.cli import app

    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(small_block(), src)
    runner = CliRunner()
    result = runner.invoke(
        app, ["optimize", str(src), str(out), "--explain", "--no-ort-fusions", "--min-elements", "0"]
    )
    assert result.exit_code == 0, result.stdout
    assert "replaced by com.quake Attention (scale=0.353553, mask)" in result.stdout
    from quake_onnx.cli import _MIN_ELEMENTS, _OPS

    assert "attention,glu,softmax" in _OPS.help and "attention" in _MIN_ELEMENTS.help


def _precision(model):
    (node,) = [n for n in model.graph.node if n.domain == "com.quake" and n.op_type == "Attention"]
    return [helper.get_attribute_value(a) for a in node.attribute if a.name == "precision"]


def test_attention_precision_sets_the_attribute():
    out, report = quake_onnx.optimize(small_block(), ort_fusions=False, min_elements=0)
    assert _precision(out) == []  # float32, the default: no attribute
    out, report = quake_onnx.optimize(small_block(), ort_fusions=False, min_elements=0, attention_precision="bfloat16")
    assert _precision(out) == [b"bfloat16"]
    engine = quake_onnx._library.attention_bf16_engine()
    assert attention_decision(report).reason.endswith(f"; precision bfloat16, run here by {engine}")
    assert engine in ("AVX512-BF16", "NEON BFMMLA", "NEON BFDOT", "float32 fallback")


def test_attention_precision_leaves_existing_nodes():
    fused, _ = quake_onnx.optimize(small_block(), ort_fusions=False, min_elements=0)
    out, _ = quake_onnx.optimize(fused, ort_fusions=False, min_elements=0, attention_precision="bfloat16")
    assert _precision(out) == []


def test_attention_precision_numerics_under_ort():
    import numpy as np

    model, feeds = block(b=1, h=4, sq=40, d=64, mask="add", seed=3)
    out, _ = quake_onnx.optimize(model, ort_fusions=False, min_elements=0, attention_precision="bfloat16")
    y = quake_onnx.InferenceSession(out.SerializeToString()).run(None, feeds)[0].astype(np.float64)
    import onnxruntime as ort

    y_ort = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    # docs/ops.md, "Error of precision bfloat16": (2e-3 + 2^-7 + e^(2D) - 1) max|V|,
    # D = (2u + u^2 + d 2^-24) A, A = scale max sum |q k|.
    q, k, v = feeds["Q"].astype(np.float64), feeds["K"].astype(np.float64), feeds["V"].astype(np.float64)
    a = float(np.matmul(np.abs(q), np.swapaxes(np.abs(k), -1, -2)).max()) / 8.0
    u = 2.0**-8
    bound = (2e-3 + 2 * u + np.expm1(2 * (2 * u + u * u + 64 * 2.0**-24) * a) + 1e-5) * np.abs(v).max()
    assert np.abs(y - y_ort).max() <= bound
    if quake_onnx._library.attention_bf16_engine() != "float32 fallback":
        assert np.abs(y - y_ort).max() > 0


def test_attention_precision_refused():
    with pytest.raises(quake_onnx.optimize.__globals__["OptimizeError"]) as info:
        quake_onnx.optimize(small_block(), ort_fusions=False, attention_precision="fp16")
    assert info.value.exit_code == 2 and "attention_precision" in str(info.value) and "'fp16'" in str(info.value)


def test_cli_attention_precision_explain(tmp_path):
    from typer.testing import CliRunner

    from quake_onnx.cli import app

    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(small_block(), src)
    result = CliRunner().invoke(
        app,
        [
            "optimize",
            str(src),
            str(out),
            "--explain",
            "--no-ort-fusions",
            "--min-elements",
            "0",
            "--attention-precision",
            "bfloat16",
        ],
    )
    assert result.exit_code == 0, result.stdout
    engine = quake_onnx._library.attention_bf16_engine()
    assert f"precision bfloat16, run here by {engine}" in result.stdout
    assert "attention bfloat16" in result.stdout  # the title
    assert _precision(onnx.load(out)) == [b"bfloat16"]


@pytest.mark.parametrize("ops", ["attention", "ATTENTION,softmax"])
def test_ops_parse(ops):
    assert "attention" in quake_onnx.optimize.__globals__["parse_ops"](ops)


def test_bfloat16_has_its_own_break_even():
    # No --min-elements: bfloat16's measured floor (H12 S64), not float32's (H12 S1024 with a mask).
    floor = BF16_ATTENTION_BREAK_EVEN
    assert 0 < floor < BREAK_EVEN["attention"]
    mid = block(b=1, h=12, sq=128, d=64, mask="add")[0]  # 196608 score elements: between the two floors
    out, _ = quake_onnx.optimize(mid, ort_fusions=False)
    assert "com.quake.Attention" not in op_types(out)
    out, report = quake_onnx.optimize(mid, ort_fusions=False, attention_precision="bfloat16")
    assert op_types(out) == ["com.quake.Attention"] and _precision(out) == [b"bfloat16"]
    out, report = quake_onnx.optimize(small_block(), ort_fusions=False, attention_precision="bfloat16")
    assert attention_decision(report).reason.startswith(f"512 score elements: below the {floor}-element")
    # Blocks without a mask share bfloat16's floor (float32 has a higher one for them).
    unmasked = block(b=1, h=12, sq=128, d=64)[0]
    assert op_types(quake_onnx.optimize(unmasked, ort_fusions=False, attention_precision="bfloat16")[0]) == [
        "com.quake.Attention"
    ]
    # An explicit --min-elements is the user's floor at either precision.
    out, report = quake_onnx.optimize(mid, ort_fusions=False, attention_precision="bfloat16", min_elements=10**6)
    assert "com.quake.Attention" not in op_types(out)


def test_bfloat16_fuses_blocks_of_symbolic_size():
    from .test_attention_symbolic import encoder_block

    model, _ = encoder_block()
    out, report = quake_onnx.optimize(model, ort_fusions=False)
    assert not attention_decision(report).replaced  # float32: an encoder at symbolic size stays per op
    out, report = quake_onnx.optimize(model, ort_fusions=False, attention_precision="bfloat16")
    assert attention_decision(report).replaced and _precision(out) == [b"bfloat16"]
    # --min-elements is a floor for static sizes: symbolic blocks stay fused at bfloat16.
    out, report = quake_onnx.optimize(model, ort_fusions=False, attention_precision="bfloat16", min_elements=10**6)
    assert attention_decision(report).replaced
    # The API takes the precision as the CLI does.
    out, _ = quake_onnx.optimize(model, ort_fusions=False, attention_precision=" BFloat16")
    assert _precision(out) == [b"bfloat16"]


def test_mha_unidirectional_takes_the_causal_floor():
    model, _ = mha(sq=64, skv=64, heads=12, hidden=96, unidirectional=1)  # B2: 98304 score elements
    (d,) = [d for d in quake_onnx.optimize(model, ort_fusions=False)[1].decisions if d.rule == "mha"]
    assert d.reason == (
        f"98304 score elements: below the {BREAK_EVEN[CAUSAL_ATTENTION]}-element break-even of the fused "
        "attention (causal)"
    )


def test_a_causal_query_block_shorter_than_its_keys_takes_the_masked_floor():
    # 64 new rows against 1024 keys (a static past): causal=1 skips few tiles, and the causal
    # floor was measured on Sq = Skv; 786432 score elements are above that floor, below the masked one.
    model = block(b=1, h=12, sq=64, skv=1024, past=960, d=8, mask="causal_add")[0]
    out, report = quake_onnx.optimize(model, ort_fusions=False)
    assert "com.quake.Attention" not in op_types(out)
    assert attention_decision(report).reason == (
        f"786432 score elements: below the {BREAK_EVEN['attention']}-element break-even of the fused attention"
    )
    square = block(b=1, h=12, sq=256, d=8, mask="causal_add")[0]  # the same count, Sq = Skv
    assert op_types(quake_onnx.optimize(square, ort_fusions=False)[0]) == ["com.quake.Attention"]
