"""The attention rule on a decoder layer in the forms of a real torch.onnx export of
Hugging Face's eager Llama attention (decoder_export.py: SmolLM2's export, every
size computed from Shape): fused in the prefill and the decode graph, the run-time
causal mask proved causal (causal=1, the mask's nodes gone), the grouped K/V read
with their fewer heads; masks that are not causal for every size stay the op's
additive M. Exact node types, the full onnx check, idempotence, and outputs
through ONNX Runtime at several sequence and past lengths."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from quake_onnx.rewrite.context import Context, Names
from quake_onnx.rewrite.engine import BREAK_EVEN
from quake_onnx.rewrite.rules import attention_parts as parts
from quake_onnx.rewrite.scopes import Scopes
from quake_onnx.rewrite.symbolic import Expr, Sizes
from quake_onnx.rewrite.types import TypeTable

from .builders import check_rewrite, decision, op_types, run
from .decoder_export import (
    ADDITIVE_VARIANTS,
    CAUSAL_VARIANTS,
    attrs,
    behind_deep_stream,
    bound,
    expected_ops,
    feeds,
    int8_matmuls,
    llama_export,
)

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


@pytest.mark.parametrize("past", [False, True], ids=["prefill", "decode"])
def test_int8_layer_deep_in_the_graph(past):
    # SmolLM2's int8 exports (quantize_dynamic, MatMul only) once lost Q's head count in their
    # second layer: the projections' DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul make
    # a later layer's sizes hundreds of nodes from the inputs. Q's head count (Reshape(x,
    # [B, S, -1, 8]) of the rotary output) is read off the Reshape and derived from the sizes,
    # each on its own, at any depth; the block is fused at the default break-even.
    model = int8_matmuls(behind_deep_stream(llama_export(past)[0], 300))
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= set(op_types(model))
    _, block, pv = llama_export(past)
    nodes = {n.name: n for n in model.graph.node}
    scopes = Scopes(gs.import_onnx(model))
    ctx = Context(scope=scopes.main, scopes=scopes, opset=17, order=2, types=TypeTable(model), names=Names())
    tensors = scopes.main.graph.tensors()
    q = tensors[nodes[block[0]].input[0]]
    assert not isinstance(ctx.shape(q)[1], int)  # onnx's inference leaves a fresh name
    assert parts.traced_dim(ctx, q, 3) == 6 and Sizes(ctx).dim(q, -3) == Expr.of(6)
    assert parts.heads(ctx, tensors["present_key"]) == 2
    f = feeds(model, 5, 7 if past else 0)
    out, report = check_rewrite(
        model, expected_ops(model, block, pv, causal=True), f, atol=bound(model, f), min_elements=BREAK_EVEN
    )
    assert decision(report, "attention").replaced and attrs(out)["causal"] == 1


def test_head_counts_known_only_from_the_inputs_are_derived():
    # A LlamaForCausalLM export without a KV cache (fresh-user run, transformers
    # 5): no tensor declares K's 2 heads, Reshape(x, [B, S, -1, D]) and the
    # repeat's Reshape computing them at run time, so shape inference left
    # both head counts unknown and the block was kept ("head counts not
    # static"). The sizes derived from the inputs give 2 and 6.
    model, block, pv = llama_export(False, "causal")
    del model.graph.output[1:]  # the prefill's present_key and present_value
    f = feeds(model, 5, 0)
    out, report = check_rewrite(model, expected_ops(model, block, pv, causal=True), f, atol=bound(model, f))
    assert decision(report, "attention").replaced, decision(report, "attention")
    for seq, _ in SIZES[False]:
        f = feeds(model, seq, 0, seed=seq)
        assert np.abs(run(out, f)[0] - run(model, f)[0]).max() <= bound(model, f), seq
