"""x * Sigmoid(x) (SiLU) and x * Sigmoid(beta * x) (Swish, beta > 0) -> com.quake Silu(alpha=beta).

Anchored at the Sigmoid, tried before the plain Sigmoid rule. The Mul is
replaced; the Sigmoid (and beta * x) go only when nothing else reads them, so
a gate shared with other consumers stays for them.
"""

from __future__ import annotations

from typing import Optional, Union

import onnx_graphsurgeon as gs

from ..context import Context
from ..match import consumers, is_op, other_operand, producer
from ..rule import Match, Rule, quake


def match(ctx: Context, sigmoid: gs.Node) -> Optional[Union[Match, str]]:
    a, gate = sigmoid.inputs[0], sigmoid.outputs[0]
    scale = producer(a)
    scaled = ctx.scalar_operand(scale) if is_op(scale, "Mul") else None
    # A Mul in the Sigmoid's own graph first: one in a nested graph may be refused (a Loop
    # body) and leaves the Sigmoid to the others anyway.
    for mul in sorted(consumers(gate), key=lambda n: not ctx.local(n)):
        if not is_op(mul, "Mul"):
            continue
        x = other_operand(mul, gate)
        if x is a:
            return _silu(mul, sigmoid, x, 1.0, [])
        if scaled is not None and x is scaled[1]:
            beta = scaled[0]
            if beta <= 0:
                return f"Swish beta {beta:g} is not > 0"
            return _silu(mul, sigmoid, x, beta, [scale])
    return None


def _silu(mul: gs.Node, sigmoid: gs.Node, x: gs.Tensor, alpha: float, scale: list[gs.Node]) -> Match:
    y = mul.outputs[0]
    return Match(
        x=x,
        remove=[mul],
        output=y,
        build=lambda ctx: [quake("Silu", [x], [y], ctx, alpha=float(alpha))],
        summary=f"com.quake Silu (alpha={alpha:g})",
        prune=[sigmoid, *scale],
    )


RULE = Rule("silu", "silu", (("", "Sigmoid"),), match, conv_activation=True)
