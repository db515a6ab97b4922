"""0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3))) -> com.quake Gelu(approximate="tanh").

The GPT-2 / Hugging Face NewGELU form, anchored at the Tanh; x^3 as Pow(x, 3),
x * x * x or x * Pow(x, 2); the sums as Add or as a two-input Sum (ONNX's own
Gelu function body), the constants stored or computed (constants.py). A Tanh
whose input is not const * (a + b) is not a candidate (plain tanh activations
are not reported).
"""

from __future__ import annotations

from typing import Optional, Union

import onnx_graphsurgeon as gs

from ..constants import scalar
from ..context import Context
from ..match import close, is_add, is_op, other_operand, producer
from ..rule import Match, Rule
from . import gelu_parts as parts


def _cube(ctx: Context, t: gs.Tensor, x: gs.Tensor) -> Optional[list[gs.Node]]:
    """The nodes computing t = x^3, or None."""
    node = producer(t)
    if is_op(node, "Pow") and node.inputs[0] is x and scalar(node.inputs[1]) == 3.0:
        return [node]
    if is_op(node, "Mul"):
        square = other_operand(node, x)
        sq = producer(square) if square is not None else None
        if is_op(sq, "Mul") and list(sq.inputs) == [x, x]:
            return [sq, node]
        if is_op(sq, "Pow") and sq.inputs[0] is x and scalar(sq.inputs[1]) == 2.0:
            return [sq, node]
    return None


def _inner(ctx: Context, inner: gs.Tensor) -> Union[tuple[gs.Tensor, list[gs.Node]], str]:
    """x and the nodes of inner = x + 0.044715 * x^3 (either order), or a reason."""
    add = producer(inner)
    for x, term in (add.inputs, reversed(add.inputs)):
        mul = producer(term)
        found = ctx.scalar_operand(mul) if is_op(mul, "Mul") else None
        if found is None:
            continue
        cube = _cube(ctx, found[1], x)
        if cube is None:
            continue
        if not close(found[0], parts.TANH_CUBIC):
            return parts.constant_reason(found[0], "0.044715", parts.TANH_CUBIC)
        return x, [*cube, mul, add]
    return "Tanh input is not sqrt(2/pi) * (x + 0.044715 * x^3)"


def match(ctx: Context, tanh: gs.Node) -> Optional[Union[Match, str]]:
    scale = producer(tanh.inputs[0])
    found = ctx.scalar_operand(scale) if is_op(scale, "Mul") else None
    if found is None or not is_add(producer(found[1])) or len(producer(found[1]).inputs) != 2:
        return None
    coefficient, inner = found
    parsed = _inner(ctx, inner)
    if isinstance(parsed, str):
        return parsed
    x, inner_nodes = parsed
    if not close(coefficient, parts.SQRT_2_OVER_PI):
        return parts.constant_reason(coefficient, "sqrt(2/pi)", parts.SQRT_2_OVER_PI)
    tail = parts.one_plus_half_product(ctx, tanh.outputs[0], x, "Tanh")
    if isinstance(tail, str):
        return tail
    nodes, y = tail
    return parts.gelu(ctx, x, [*inner_nodes, scale, tanh, *nodes], y, "tanh")


RULE = Rule("tanh_gelu", "gelu", (("", "Tanh"),), match, conv_activation=True)
