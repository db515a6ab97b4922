"""Sigmoid -> com.quake Sigmoid.

Runs after the SiLU rule on the same node: a Sigmoid that only fed x*Sigmoid(x)
is gone by then; one with other readers is still here and is replaced for them.
"""

from __future__ import annotations

from ..rule import Rule
from .single import one_for_one

RULE = Rule(
    "sigmoid", "sigmoid", (("", "Sigmoid"),), lambda ctx, node: one_for_one(node, "Sigmoid"), conv_activation=True
)
