"""Runs the rules over a graph and its subgraphs and applies the matches."""
from __future__ import annotations

from typing import Iterable, Mapping

import onnx_graphsurgeon as gs

from . import layout
from .constants import computation
from .context import Context
from .match import DEFAULT_DOMAINS, first_other_consumer, is_op, producer
from .report import Decision, Report
from .rule import Match, Rule
from .types import SUPPORTED, type_name

SKIPPED = "skipped by --skip-nodes"

# Below these element counts a com.quake node is no faster than ONNX Runtime's
# own op: the custom-op call costs about as much as the exponentials it saves
# (BENCHMARKS.md, "Small tensors"). Exp's ORT kernel is the fastest of all.
BREAK_EVEN = {"softmax": 2048, "logsoftmax": 2048, "gelu": 2048, "silu": 2048, "sigmoid": 2048, "exp": 8192}


def qualified(node: gs.Node) -> str:
    domain = node.domain or ""
    return node.op if domain in DEFAULT_DOMAINS else f"{domain}.{node.op}"


class Engine:
    def __init__(self, rules: Iterable[Rule], ops: frozenset[str], report: Report, min_elements: Mapping[str, int] = {}):
        self.by_anchor: dict[tuple[str, str], list[Rule]] = {}
        for rule in rules:  # list order is priority: composite patterns before the single ops they contain
            for domain, op in rule.anchors:
                self.by_anchor.setdefault((domain, op), []).append(rule)
        self.ops = ops
        self.report = report
        self.min_elements = dict(min_elements)

    def run(self, ctx: Context) -> None:
        gone: set[int] = set()  # ids of nodes a replacement took out
        for node in list(ctx.graph.nodes):
            domain = "" if (node.domain or "") in DEFAULT_DOMAINS else node.domain
            for rule in self.by_anchor.get((domain, node.op), []):
                if id(node) in gone:
                    break
                if self._try(ctx, rule, node, gone) in layout.NODE_REASONS:
                    break  # true of the node whatever the pattern: the next rule would say it again
        for node in list(ctx.graph.nodes):
            for attr, value in node.attrs.items():
                for index, sub in enumerate(value if isinstance(value, list) else [value]):
                    if isinstance(sub, gs.Graph):
                        suffix = f"[{index}]" if isinstance(value, list) else ""
                        self.run(ctx.subgraph(sub, f"{ctx.path}/{node.name or node.op}.{attr}{suffix}"))

    def _decide(self, ctx: Context, rule: Rule, node: gs.Node, replaced: bool, reason: str) -> None:
        self.report.add(Decision(node.name, qualified(node), rule.name, replaced, reason, ctx.path))

    def _try(self, ctx: Context, rule: Rule, node: gs.Node, gone: set[int]) -> str:
        """Decides on one rule at one node; returns the reason for keeping it ("" otherwise)."""
        result = rule.match(ctx, node)
        if result is None:
            return ""
        if isinstance(result, str):
            self._decide(ctx, rule, node, False, result)
            return result
        reason = self._refusal(ctx, rule, node, result)
        if reason:
            self._decide(ctx, rule, node, False, reason)
            return reason
        apply(ctx, node, result, gone)
        self._decide(ctx, rule, node, True, f"replaced by {result.summary}")
        return ""

    def _refusal(self, ctx: Context, rule: Rule, anchor: gs.Node, match: Match) -> str:
        if any(n.name in ctx.skip for n in match.remove):
            return SKIPPED
        if rule.family not in self.ops:
            return f"{rule.family} is not among the selected ops"
        elem = ctx.elem_type(match.x)
        if elem is None:
            return "element type unknown"
        if elem not in SUPPORTED:
            return f"element type {type_name(elem)} is not supported"
        size = _static_size(ctx.shape(match.x))
        floor = self.min_elements.get(rule.family, 0)
        if size is not None and size < floor:
            return f"{size} elements: below the {floor}-element break-even of a custom-op call"
        # Rules follow a pattern through its fitting reader and leave other readers to this one check.
        inner = [t for n in match.remove for t in n.outputs if t is not match.output]
        leak = first_other_consumer(inner, match.remove, ctx.graph)
        if leak is not None:
            return f"intermediate {leak.name} has other consumers"
        if ctx.keep_conv_layout:
            if rule.conv_activation:
                return layout.conv_layout_reason(ctx, rule, anchor, match.x, match.output) or ""
        elif layout.is_blocked(match.x) and not _elementwise(rule, anchor, match):
            return layout.BLOCKED_REASON
        return ""


def _static_size(shape) -> "int | None":
    """Element count of a fully static shape, else None (symbolic sizes are
    taken to be large: that is what they are in deployed models)."""
    if shape is None or any(not isinstance(d, int) or d <= 0 for d in shape):
        return None
    size = 1
    for d in shape:
        size *= d
    return size


# Rules whose replacement of a single-input node (or of x * Sigmoid(x)) is one elementwise
# com.quake op: valid on blocked NCHWc data, whose channel padding never reaches a result.
_ELEMENTWISE_RULES = frozenset({"silu", "swish", "sigmoid", "quick_gelu", "exp", "gelu", "contrib_gelu"})


def _elementwise(rule: Rule, anchor: gs.Node, match: Match) -> bool:
    if rule.name not in _ELEMENTWISE_RULES:
        return False
    if rule.name == "silu":
        return True
    real_inputs = [t for t in anchor.inputs if t.name]
    return len(match.remove) == 1 and len(real_inputs) == 1


def apply(ctx: Context, anchor: gs.Node, match: Match, gone: set[int]) -> None:
    """Replace match.remove by the built nodes, placed where the last removed node was (all
    the pattern's inputs are computed before it, so the order stays topological)."""
    graph = ctx.graph
    removed = {id(n) for n in match.remove}
    last = max(i for i, n in enumerate(graph.nodes) if id(n) in removed)
    maybe_dead = list(match.prune)
    for node in match.remove + match.prune:
        for tensor in node.inputs:
            if is_op(producer(tensor), "Constant"):
                maybe_dead.append(producer(tensor))
            # A computed constant (Sqrt(CastLike(c))) goes with the pattern unless something else reads it.
            computed = computation(tensor)
            if computed is not None:
                maybe_dead.extend(n for n in computed[1] if n.name not in ctx.skip)
    for node in match.remove:
        node.inputs.clear()
        node.outputs.clear()
    base = anchor.name or match.output.name  # ONNX allows unnamed nodes
    created = [
        gs.Node(spec.op, ctx.names.node(f"{base}/quake_{spec.op}"), spec.attrs, spec.inputs, spec.outputs, domain=spec.domain)
        for spec in match.build(ctx)
    ]
    nodes = []
    for i, node in enumerate(graph.nodes):
        if id(node) not in removed:
            nodes.append(node)
        if i == last:
            nodes.extend(created)
    gone.update(removed)
    gone.update(_prune(graph, maybe_dead, nodes))
    graph.nodes = [n for n in nodes if id(n) not in gone]


def _prune(graph: gs.Graph, candidates: list[gs.Node], nodes: list[gs.Node]) -> set[int]:
    """Drop candidates nothing reads any more; repeats because dropping one can free its producer."""
    alive = {id(n) for n in nodes}
    outputs = {id(t) for t in graph.outputs}
    dropped: set[int] = set()
    changed = True
    while changed:
        changed = False
        for node in candidates:
            if id(node) in dropped or id(node) not in alive:
                continue
            if any(t.outputs or id(t) in outputs for t in node.outputs):
                continue
            node.inputs.clear()
            node.outputs.clear()
            dropped.add(id(node))
            changed = True
    return dropped
