"""ONNX Swish (opset 24), x * sigmoid(alpha * x) -> com.quake Silu(alpha)."""

from __future__ import annotations

import math

from ..rule import Rule
from .single import one_for_one

DEFAULT_ALPHA = 1.0  # the ONNX default


def match(ctx, node):
    alpha = float(node.attrs.get("alpha", DEFAULT_ALPHA))
    if not 0 < alpha < math.inf:  # com.quake Silu rejects the rest when the session loads (docs/ops.md)
        return f"alpha {alpha:g} is not a finite number > 0"
    return one_for_one(node, "Silu", f"com.quake Silu (alpha={alpha:g})", alpha=alpha)


RULE = Rule("swish", "silu", (("", "Swish"),), match, conv_activation=True)
