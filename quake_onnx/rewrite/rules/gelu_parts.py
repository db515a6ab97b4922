"""Pieces every GELU rule shares: the 0.5 * x * (1 + f) tail, the bias fusion and the replacement."""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import onnx_graphsurgeon as gs

from ..context import Context
from ..match import (
    add_reader,
    const_shape,
    is_add,
    is_op,
    operands,
    other_operand,
    producer,
    reader,
)
from ..rule import Match, quake

HALF = 0.5


def constant_reason(value: float, what: str, target: float) -> str:
    return f"constant {value:.7g} is not {what} ({target:.7g}) within {1e-3:g} relative"


def exact_reason(value: float, what: str, target: float) -> Optional[str]:
    """None when `value` is exactly `target`. 0.5, 1 and 2 are exact in every
    float type, so exporters store them exactly; the 1e-3 tolerance is for the
    irrational constants (sqrt(2), sqrt(2/pi)) that they round. A 1.0009 in
    0.5 x (1.0009 + erf(x / sqrt 2)) is no GELU: at x = -60 it gives -0.027
    where GELU gives 0."""
    return None if value == target else f"constant {str(np.float32(value))} is not exactly {what}"


def halving(ctx: Context, node: Optional[gs.Node], t: gs.Tensor) -> Optional[str]:
    """None if node computes t * 0.5 (either order) or t / 2, else why not."""
    if is_op(node, "Mul"):
        found = ctx.scalar_operand(node)
        if found is not None and found[1] is t:
            return exact_reason(found[0], "0.5", HALF)
    if is_op(node, "Div") and node.inputs[0] is t:
        divisor = ctx.scalar_divisor(node)
        if divisor is not None:
            return exact_reason(divisor, "2", 2.0)
    return f"{t.name} is not multiplied by 0.5"


def one_plus_half_product(
    ctx: Context, t: gs.Tensor, x: gs.Tensor, what: str
) -> Union[tuple[list[gs.Node], gs.Tensor], str]:
    """Match y = 0.5 * x * (1 + t), t the Erf or Tanh output; returns the
    nodes from the Add on and y, or a reason."""
    add = add_reader(t)
    one = ctx.scalar_operand(add) if add is not None else None
    if one is None or one[1] is not t:
        return f"{what} output is not added to 1"
    reason = exact_reason(one[0], "1", 1.0)
    if reason:
        return reason
    tail = half_product(ctx, add.outputs[0], x, f"1 + {what.lower()}")
    if isinstance(tail, str):
        return tail
    nodes, y = tail
    return [add, *nodes], y


def half_product(ctx: Context, p: gs.Tensor, x: gs.Tensor, what: str) -> Union[tuple[list[gs.Node], gs.Tensor], str]:
    """Match y = 0.5 * x * p in the association exporters use, every operand order:
    (x * p) * 0.5   PyTorch nn.GELU,  (x * 0.5) * p   TF/Keras and Hugging Face,
    (p * 0.5) * x   (0.5 * (1 + erf)) * x.  Returns (nodes, y) or a reason."""
    m1 = reader(p, "Mul")
    if m1 is None:
        return f"{what} is not multiplied by x"
    other = other_operand(m1, p)
    q = m1.outputs[0]
    if other is x:
        reasons = []
        for m2 in q.outputs:
            reason = halving(ctx, m2, q)
            if not reason:
                return [m1, m2], m2.outputs[0]
            reasons.append(reason)
        return reasons[0] if reasons else f"x * ({what}) is not multiplied by 0.5"
    found = ctx.scalar_operand(m1)
    if found is not None and found[1] is p:
        reason = exact_reason(found[0], "0.5", HALF)
        if reason:
            return reason
        m2 = reader(q, "Mul")
        if m2 is None or other_operand(m2, q) is not x:
            return f"0.5 * ({what}) is not multiplied by x"
        return [m1, m2], m2.outputs[0]
    half = producer(other) if other is not None else None
    if half is not None and any(t is x for t in half.inputs):
        reason = halving(ctx, half, x)
        return reason if reason else ([half, m1], q)
    return f"{what} is not multiplied by 0.5 * x"


def _bias_for(ctx: Context, x: gs.Tensor, pattern: list[gs.Node]) -> Optional[tuple[gs.Tensor, gs.Tensor, gs.Node]]:
    """(input, bias, Add) when x = Add(input, b) with b a 1-D constant as long as input's
    last dim, read by nothing but the GELU: what ORT's BiasGelu fusion would fold in."""
    add = producer(x)
    # An Add in an outer graph stays there: folding it in would make the pattern span two graphs.
    if not is_add(add) or add.name in ctx.skip or not ctx.local(add):
        return None
    pair = operands(add, lambda t: const_shape(t) is not None and len(const_shape(t)) == 1)
    if pair is None:
        return None
    bias, h = pair
    shape = ctx.shape(h)
    # h's own last dim must match: with h [.., 1] the Add broadcasts, which B of com.quake Gelu cannot.
    if not shape or shape[-1] != const_shape(bias)[0]:
        return None
    if ctx.first_other_consumer([x], pattern) is not None:
        return None
    return h, bias, add


def gelu(
    ctx: Context,
    x: gs.Tensor,
    pattern: list[gs.Node],
    output: gs.Tensor,
    approximate: str,
    bias: Optional[gs.Tensor] = None,
    what: str = "",
) -> Match:
    """The com.quake Gelu replacing `pattern`; folds a preceding bias Add in when there is no bias yet."""
    fused = _bias_for(ctx, x, pattern) if bias is None else None
    remove = list(pattern)
    if fused is not None:
        x, bias, add = fused
        remove.insert(0, add)
    inputs = [x] + ([bias] if bias is not None else [])
    summary = f"com.quake Gelu (approximate={approximate}{', bias fused' if fused else ''})"
    return Match(
        x=x,
        remove=remove,
        output=output,
        build=lambda ctx: [quake("Gelu", inputs, [output], ctx, approximate=approximate)],
        summary=summary,
    )


SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TANH_CUBIC = 0.044715
