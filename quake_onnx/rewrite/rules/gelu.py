"""ONNX Gelu (opset 20, approximate "none" or "tanh") -> com.quake Gelu, with a preceding bias Add folded in."""

from __future__ import annotations

from ..rule import Rule
from . import gelu_parts as parts


def match(ctx, node):
    approximate = node.attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        return f"approximate={approximate!r} is neither 'none' nor 'tanh'"
    return parts.gelu(ctx, node.inputs[0], [node], node.outputs[0], approximate)


RULE = Rule("gelu", "gelu", (("", "Gelu"),), match, conv_activation=True)
