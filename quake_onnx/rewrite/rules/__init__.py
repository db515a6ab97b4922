"""The rules, in priority order: where two start from the same op, the composite pattern goes first.

ATTENTION_RULES fuse whole attention blocks (the optimizer's fuse_attention
stage runs them alone, before the per-op stage runs OP_RULES); RULES is both,
attention first, for a one-pass rewrite_model.
"""

from __future__ import annotations

from ..rule import Rule
from . import (
    attention,
    contrib_gelu,
    erf_gelu,
    exp,
    gelu,
    glu,
    logsoftmax,
    mha,
    onnx_attention,
    quick_gelu,
    sigmoid,
    silu,
    softmax,
    swish,
    tanh_gelu,
)

ATTENTION_RULES: list[Rule] = [
    attention.RULE,  # anchored at the Softmax: before the softmax rule, which takes what it refuses
    mha.RULE,
    onnx_attention.RULE,
]

OP_RULES: list[Rule] = [
    glu.RULE,  # before every activation rule: act(gate) * up takes their pattern whole
    erf_gelu.RULE,
    tanh_gelu.RULE,
    gelu.RULE,
    contrib_gelu.RULE,
    quick_gelu.RULE,
    swish.RULE,
    silu.RULE,  # before sigmoid: x * Sigmoid(x) takes its Sigmoid
    sigmoid.RULE,
    softmax.RULE,
    logsoftmax.RULE,
    exp.RULE,
]

RULES: list[Rule] = ATTENTION_RULES + OP_RULES
