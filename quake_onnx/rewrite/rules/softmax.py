"""Softmax -> com.quake Softmax, in every opset.

Before opset 13, Softmax(axis=a) coerces X to 2-D [d0*..*d(a-1), d(a)*..*d(n-1)]
and normalises each row, i.e. over all trailing dims at once. com.quake
Softmax normalises over one axis, so that is the same only when a is the last
axis (or every dim after a is 1); otherwise the rule reproduces the coercion:
Flatten(axis=a) -> com.quake Softmax(axis=-1) -> Reshape back to X's shape.
LogSoftmax has the same history and shares this rule's logic.

A static shape with a 0 holds no element: any single-axis op gives the same
empty Y, so no coercion is built (before opset 14 Reshape reads a 0 in its
target as "copy that input dim", which the 2-D tensor lacks from index 2 on).
A symbolic dim at index 2 or later that is 0 at run time still fails that
Reshape (an empty tensor of rank 3 or more, normalised over a non-last axis,
in a model of opset 12 or less).
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import onnx_graphsurgeon as gs

from ..context import Context
from ..rule import Match, NodeSpec, Rule, quake
from .single import one_for_one

OPSET_SINGLE_AXIS = 13  # from here on, axis means one axis
OPSET_NEGATIVE_FLATTEN = 11  # Flatten accepts a negative axis
OPSET_RESHAPE_INPUT = 5  # Reshape takes its shape as an input


def match_normalisation(ctx: Context, node: gs.Node, op: str) -> Optional[Union[Match, str]]:
    if ctx.opset >= OPSET_SINGLE_AXIS:
        return one_for_one(node, op, axis=int(node.attrs.get("axis", -1)))
    axis = int(node.attrs.get("axis", 1))
    shape = ctx.shape(node.inputs[0])
    static = None
    if shape is not None:
        rank = len(shape)
        if not -rank <= axis < rank:
            return f"axis {axis} is out of range for rank {rank}"
        axis = axis % rank  # Flatten of every opset takes a non-negative axis
        if axis == rank - 1:
            return one_for_one(node, op, axis=-1)
        if all(d == 1 for d in shape[axis + 1 :]):  # flattening size-1 dims changes nothing
            return one_for_one(node, op, axis=axis)
        if any(isinstance(d, int) and d == 0 for d in shape):
            return one_for_one(node, op, axis=axis)
        if all(isinstance(d, int) and d > 0 for d in shape):
            static = np.array(shape, np.int64)
    elif axis == -1:
        return one_for_one(node, op, axis=-1)
    elif axis < 0 and ctx.opset < OPSET_NEGATIVE_FLATTEN:
        return f"rank unknown and opset {ctx.opset} has no Flatten with a negative axis to reproduce axis {axis}"
    if ctx.opset < OPSET_RESHAPE_INPUT:
        return f"opset {ctx.opset} has no Reshape with a shape input to restore the shape after flattening"
    return _flattened(node, op, axis, static)


def _flattened(node: gs.Node, op: str, axis: int, static: Optional[np.ndarray]) -> Match:
    x, y = node.inputs[0], node.outputs[0]

    def build(ctx: Context) -> list[NodeSpec]:
        flat = ctx.variable(f"{y.name}/quake_2d")
        normalised = ctx.variable(f"{y.name}/quake_{op.lower()}_2d")
        specs = [
            NodeSpec("Flatten", [x], [flat], {"axis": axis}, domain=""),
            quake(op, [flat], [normalised], ctx, axis=-1),
        ]
        if static is not None:
            target: gs.Tensor = gs.Constant(ctx.names.tensor(f"{y.name}/quake_shape"), static)
        else:
            target = ctx.variable(f"{y.name}/quake_shape")
            specs.append(NodeSpec("Shape", [x], [target], domain=""))
        specs.append(NodeSpec("Reshape", [normalised, target], [y], domain=""))
        return specs

    return Match(
        x=x,
        remove=[node],
        output=y,
        build=build,
        summary=f"com.quake {op} between Flatten(axis={axis}) and Reshape (pre-opset-13 semantics)",
    )


RULE = Rule("softmax", "softmax", (("", "Softmax"),), lambda ctx, node: match_normalisation(ctx, node, "Softmax"))
