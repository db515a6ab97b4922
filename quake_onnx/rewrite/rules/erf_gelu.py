"""x * 0.5 * (1 + Erf(x / sqrt(2))) -> com.quake Gelu(approximate="none"), anchored at the Erf.

Covers x / 1.4142135 and x * 0.70710678 (or a computed x / Sqrt(CastLike(2)),
ONNX's own function body; constants.py), the 1 + erf sum in either order, as
Add or a two-input Sum, and every association of the final products (see
gelu_parts.half_product).
"""

from __future__ import annotations

from typing import Optional, Union

import onnx_graphsurgeon as gs

from ..context import Context
from ..match import close, is_op, producer
from ..rule import Match, Rule
from . import gelu_parts as parts


def _scaled_input(ctx: Context, s: gs.Tensor) -> Union[tuple[gs.Node, gs.Tensor], str]:
    node = producer(s)
    if is_op(node, "Div"):
        divisor = ctx.scalar_divisor(node)
        if divisor is not None:
            if not close(divisor, parts.SQRT2):
                return parts.constant_reason(divisor, "sqrt(2)", parts.SQRT2)
            return node, node.inputs[0]
    if is_op(node, "Mul"):
        found = ctx.scalar_operand(node)
        if found is not None:
            if not close(found[0], 1 / parts.SQRT2):
                return parts.constant_reason(found[0], "1/sqrt(2)", 1 / parts.SQRT2)
            return node, found[1]
    return "Erf input is not x / sqrt(2)"


def match(ctx: Context, erf: gs.Node) -> Optional[Union[Match, str]]:
    scaled = _scaled_input(ctx, erf.inputs[0])
    if isinstance(scaled, str):
        return scaled
    scale, x = scaled
    tail = parts.one_plus_half_product(ctx, erf.outputs[0], x, "Erf")
    if isinstance(tail, str):
        return tail
    nodes, y = tail
    return parts.gelu(ctx, x, [scale, erf, *nodes], y, "none")


RULE = Rule("erf_gelu", "gelu", (("", "Erf"),), match, conv_activation=True)
