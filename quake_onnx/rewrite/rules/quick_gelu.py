"""com.microsoft QuickGelu, x * sigmoid(alpha * x) -> com.quake Silu(alpha)."""

from __future__ import annotations

from ..rule import Rule
from .single import one_for_one

DEFAULT_ALPHA = 1.702  # ORT's default for QuickGelu


def match(ctx, node):
    alpha = float(node.attrs.get("alpha", DEFAULT_ALPHA))
    if alpha <= 0:
        return f"alpha {alpha:g} is not > 0"
    return one_for_one(node, "Silu", f"com.quake Silu (alpha={alpha:g})", alpha=alpha)


RULE = Rule("quick_gelu", "gelu", (("com.microsoft", "QuickGelu"),), match, conv_activation=True)
