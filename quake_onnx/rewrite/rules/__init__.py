"""The rules, in priority order: where two start from the same op, the composite pattern goes first."""
from __future__ import annotations

from ..rule import Rule
from . import contrib_gelu, erf_gelu, exp, gelu, logsoftmax, quick_gelu, sigmoid, silu, softmax, swish, tanh_gelu
from . import glu

RULES: list[Rule] = [
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
