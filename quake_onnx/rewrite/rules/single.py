"""The replacement shared by rules that swap one node for one com.quake node."""

from __future__ import annotations

from typing import Optional

import onnx_graphsurgeon as gs

from ..rule import Match, quake


def one_for_one(node: gs.Node, op: str, summary: Optional[str] = None, **attrs) -> Match:
    x, y = node.inputs[0], node.outputs[0]
    return Match(
        x=x,
        remove=[node],
        output=y,
        build=lambda ctx: [quake(op, [x], [y], ctx, **attrs)],
        summary=summary or f"com.quake {op}",
    )
