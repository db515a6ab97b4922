"""The attention rule on a decoder layer in the forms of a real torch.onnx export of
Hugging Face's eager Llama attention (decoder_export.py: SmolLM2's export, every
size computed from Shape): fused in the prefill and the decode graph, the run-time
causal mask proved causal (causal=1, the mask's nodes gone), the grouped K/V read
with their fewer heads; masks that are not causal for every size stay the op's
additive M. Exact node types, the full onnx check, idempotence, and outputs
through ONNX Runtime at several sequence and past lengths."""

from __future__ import annotations

import numpy as np
import pytest

from .builders import check_rewrite, decision, op_types, run
from .decoder_export import ADDITIVE_VARIANTS, CAUSAL_VARIANTS, attrs, bound, expected_ops, feeds, llama_export

# Past and new lengths run through both graphs (Sq = 1 is the decode step).
SIZES = {False: [(1, 0), (6, 0), (17, 0)], True: [(1, 7), (4, 9), (1, 1), (3, 0)]}


@pytest.mark.parametrize("variant", CAUSAL_VARIANTS)
@pytest.mark.parametrize("past", [False, True], ids=["prefill", "decode"])
def test_runtime_causal_mask_becomes_causal(past, variant):
    model, block, pv = llama_export(past, variant)
    f = feeds(model, 5, 7 if past else 0)
    out, report = check_rewrite(model, expected_ops(model, block, pv, causal=True), f, atol=bound(model, f))
    d = decision(report, "attention")
    assert d.replaced and "causal" in d.reason, d
    a = attrs(out)
    assert a["causal"] == 1 and a["k_transposed"] == 0 and a["scale"] == pytest.approx(8**-0.5)
    # K/V as cached, with their 2 heads (repeat_kv gone), and no mask input.
    assert a["inputs"][1:] == ["present_key", "present_value"]
    assert not {"LessOrEqual", "Less", "Greater", "GreaterOrEqual", "Expand", "Where"} & set(op_types(out))
    for seq, p in SIZES[past]:
        f = feeds(model, seq, p, seed=seq + p)
        for want, got in zip(run(model, f), run(out, f)):
            assert got.shape == want.shape
            assert np.abs(got - want).max() <= bound(model, f), (seq, p)


@pytest.mark.parametrize("variant", ADDITIVE_VARIANTS)
@pytest.mark.parametrize("past", [False, True], ids=["prefill", "decode"])
def test_mask_not_causal_for_every_size_stays_additive(past, variant):
    # One key too many, the keys after the query, a padding mask or a sliding window And-ed in,
    # the rows counted from another input, one row broadcast over all: fused, the mask kept as M.
    model, block, pv = llama_export(past, variant)
    f = feeds(model, 5, 7 if past else 0)
    out, report = check_rewrite(model, expected_ops(model, block, pv, causal=False), f, atol=bound(model, f))
    assert decision(report, "attention").replaced
    a = attrs(out)
    assert a["causal"] == 0 and len(a["inputs"]) == 4
    for seq, p in SIZES[past]:
        f = feeds(model, seq, p, seed=seq + p)
        for want, got in zip(run(model, f), run(out, f)):
            assert np.abs(got - want).max() <= bound(model, f), (seq, p)
