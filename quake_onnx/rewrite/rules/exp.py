"""Exp -> com.quake Exp."""

from __future__ import annotations

from ..rule import Rule
from .single import one_for_one

RULE = Rule("exp", "exp", (("", "Exp"),), lambda ctx, node: one_for_one(node, "Exp"))
