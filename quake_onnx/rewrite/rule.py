"""What a rule is: a pattern anchored at one node, checks that explain a refusal, and a rewrite.

A rule's `match(ctx, node)` returns
  None   - the pattern is not there at all (nothing to report),
  str    - the pattern is there but cannot be replaced: the reason, for the report,
  Match  - what to take out and how to build the replacement.
The engine applies a Match only after the common checks (skip list, --ops,
element type), so `build` runs only for replacements that happen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Union

import onnx_graphsurgeon as gs

if TYPE_CHECKING:
    from .context import Context

QUAKE = "com.quake"


@dataclass
class NodeSpec:
    """A node to create; `outputs` may reuse the replaced pattern's output tensor."""

    op: str
    inputs: list[gs.Tensor]
    outputs: list[gs.Tensor]
    attrs: dict = field(default_factory=dict)
    domain: str = QUAKE


@dataclass
class Match:
    x: gs.Tensor  # the input whose element type decides whether to replace
    remove: list[gs.Node]  # the pattern's nodes; nothing outside them reads their intermediates
    output: gs.Tensor  # the pattern's result, which the replacement produces under the same name
    build: Callable[["Context"], list[NodeSpec]]  # the replacement, in topological order
    summary: str  # "com.quake Gelu (bias fused)"
    # Pattern nodes that go only if nothing else reads them afterwards (a Sigmoid shared by a SiLU and others).
    prune: list[gs.Node] = field(default_factory=list)
    # What the break-even (--min-elements) is compared with, for a fused op whose cost is not x's size:
    # the element count (None when symbolic: taken as large), what those elements are, and whose break-even.
    size: Optional[Callable[["Context"], Optional[int]]] = None
    size_what: str = "elements"
    cost: str = "a custom-op call"
    # The floors key of this match's break-even where it is not its family's (an
    # attention block without a mask or a causal one: engine.ATTENTION_KEYS); floors
    # without that key (an explicit --min-elements, tune) fall back to the family's.
    floor_key: Optional[str] = None
    # A symbolic size is taken as large (replaced) unless this says why not;
    # --min-elements 0 replaces it all the same.
    unknown_size_reason: Optional[str] = None


@dataclass(frozen=True)
class Rule:
    name: str  # reported as Decision.rule
    family: str  # the --ops key that selects it: attention, glu, softmax, logsoftmax, gelu, silu, sigmoid, exp
    anchors: tuple[tuple[str, str], ...]  # (domain, op type) of the node the pattern starts from
    match: Callable[["Context", gs.Node], Optional[Union[Match, str]]]
    # An activation ONNX Runtime keeps inside its NCHWc conv layout or fuses into a Conv
    # (Sigmoid, SiLU, GELU forms): left there unless the layout is already fixed (layout.py).
    conv_activation: bool = False


def quake(op: str, inputs: list[gs.Tensor], outputs: list[gs.Tensor], ctx: "Context", **attrs) -> NodeSpec:
    """A com.quake node carrying the pass's `order` (every new node states it);
    a Softmax also gets the context's softmax_attrs (tune's exaq choice)."""
    attrs = {**attrs, "order": ctx.order}
    if op == "Softmax":
        attrs.update(dict(ctx.softmax_attrs))
    return NodeSpec(op, inputs, outputs, attrs)
