"""ONNX Runtime contrib GELUs (com.microsoft) -> com.quake Gelu.

Gelu is the erf form; BiasGelu is Gelu(A + B); FastGelu is the tanh form with
an optional bias. A bias they carry becomes com.quake Gelu's B; without one,
a preceding bias Add is folded in as for the other GELU forms.
"""

from __future__ import annotations

from ..rule import Rule
from . import gelu_parts as parts

MS = "com.microsoft"
APPROXIMATE = {"Gelu": "none", "BiasGelu": "none", "FastGelu": "tanh"}


def match(ctx, node):
    bias = node.inputs[1] if len(node.inputs) > 1 and node.inputs[1].name else None  # "" marks an omitted input
    return parts.gelu(ctx, node.inputs[0], [node], node.outputs[0], APPROXIMATE[node.op], bias=bias)


RULE = Rule("contrib_gelu", "gelu", tuple((MS, op) for op in APPROXIMATE), match, conv_activation=True)
