"""LogSoftmax -> com.quake LogSoftmax (pre-opset-13 axis handling as for Softmax)."""

from __future__ import annotations

from ..rule import Rule
from .softmax import match_normalisation

RULE = Rule(
    "logsoftmax", "logsoftmax", (("", "LogSoftmax"),), lambda ctx, node: match_normalisation(ctx, node, "LogSoftmax")
)
