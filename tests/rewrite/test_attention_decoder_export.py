"""The attention rule on a decoder layer in the forms of a real torch.onnx export of
Hugging Face's eager Llama attention (decoder_export.py: SmolLM2's export, every
size computed from Shape): fused in the prefill and the decode graph, the run-time
causal mask proved causal (causal=1, the mask's nodes gone), the grouped K/V read
with their fewer heads; masks that are not causal for every size stay the op's
additive M. Exact node types, the full onnx check, idempotence, and outputs
through ONNX Runtime at several sequence and past lengths."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from .builders import check_rewrite, decision, op_types, run
from .decoder_export import ADDITIVE_VARIANTS, CAUSAL_VARIANTS, feeds, llama_export

ATTENTION = "com.quake.Attention"
# Past and new lengths run through both graphs (Sq = 1 is the decode step).
SIZES = {False: [(1, 0), (6, 0), (17, 0)], True: [(1, 7), (4, 9), (1, 1), (3, 0)]}


def expected_ops(model: onnx.ModelProto, block: list[str], pv: str, causal: bool) -> list[str]:
    """The node types after the fusion, worked out independently of the rule: the block's
    nodes out, com.quake Attention where its weights · V MatMul was, reading Q, the cached
    K/V (and the mask when it is not causal), then every node nothing reads any more out."""
    nodes = {n.name: n for n in model.graph.node}
    qk, add = nodes[block[0]], nodes[block[2]]
    fused = helper.make_node(
        "Attention",
        [qk.input[0], "present_key", "present_value"] + ([] if causal else [add.input[1]]),
        [nodes[pv].output[0]],
        domain="com.quake",
    )
    kept = [fused if n.name == pv else n for n in model.graph.node if n.name not in block[:-1]]
    outputs = {o.name for o in model.graph.output}
    while True:
        read = {i for n in kept for i in n.input} | outputs
        alive = [n for n in kept if any(o in read for o in n.output)]
        if len(alive) == len(kept):
            break
        kept = alive
    return [ATTENTION if n.domain == "com.quake" else n.op_type for n in kept]


def attrs(model: onnx.ModelProto) -> dict:
    node = next(n for n in model.graph.node if n.op_type == "Attention")
    return {a.name: helper.get_attribute_value(a) for a in node.attribute} | {"inputs": list(node.input)}


def bound(model, f) -> float:
    # The op's 2e-3 x max|V| (order 2), carried through o_proj: relative to the output's size.
    return 5e-3 * float(np.abs(run(model, f)[0]).max())


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
