"""Runs the rules over a graph and its subgraphs and applies the matches."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Mapping, Union

import onnx_graphsurgeon as gs

from . import layout
from .constants import computation
from .context import Context
from .match import DEFAULT_DOMAINS, is_op, producer
from .report import Decision, Report
from .rule import Match, Rule
from .scopes import Scope, Scopes
from .types import SUPPORTED, type_name

SKIPPED = "skipped by --skip-nodes"
NOT_SELECTED = "not selected (tune leaves it to ONNX Runtime)"

# Below these element counts a com.quake node is no faster than ONNX Runtime's
# own op: the custom-op call costs about as much as the exponentials it saves
# (BENCHMARKS.md, "Small tensors"). Exp's ORT kernel is the fastest of all.
# Attention counts score elements (B*H*Sq*Skv). A floor must hold at every
# thread count a model may run at: the fused op scales over threads less
# well than ORT's per-op GEMMs, so these are the larger of the 1- and
# 2-thread break-evens (docs/optimize.md, "The break-even";
# benchmarks/attention_break_even.py, Zen 4). Glu is not measured on its own:
# it replaces an activation and a Mul, so its activations' floor is on the safe side.
UNMASKED_ATTENTION = "attention_unmasked"  # BREAK_EVEN's key for attention blocks without a mask
CAUSAL_ATTENTION = "attention_causal"  # BREAK_EVEN's key for blocks fused with causal=1
ATTENTION_KEYS = (UNMASKED_ATTENTION, CAUSAL_ATTENTION)  # rule.Match.floor_key values
BREAK_EVEN = {
    # A block with a mask: at 2 threads from H12 S1024 1.03-1.19x the block per op (S512-S768
    # 0.87-1.16x from run to run) and 1.01-1.09x ORT's own ONNX Attention kernel; at 1 thread
    # the per-op block is beaten from S384 (1.10x), ORT's kernel from S512 (1.05x).
    "attention": 12 * 1024 * 1024,
    "glu": 2048,
    "softmax": 2048,
    "logsoftmax": 2048,
    "gelu": 2048,
    "silu": 2048,
    "sigmoid": 2048,
    "exp": 8192,
    # A block without a mask (ViT, Whisper's encoder): the per-op rewrite then has no Add
    # pass over the scores for the fused op to save, and up to H12 S1536 the fused op was
    # 0.88-1.02x it at 1 thread; from S2048 1.00-1.03x (1.07x at 2 threads). ORT's own
    # ONNX Attention without a mask at 2 threads: 0.83-0.94x up to S768, 0.97-1.08x at S1024,
    # 1.02-1.03x from S1536.
    UNMASKED_ATTENTION: 12 * 2048 * 2048,
    # A causal block over Sq = Skv (a decoder's prefill) skips the masked half of its tiles
    # and of the tiles on its diagonal: at 1 thread 1.09-1.14x the block per op at H12 S96,
    # 1.03-1.07x at S80, 0.92-1.00x at S64; at 2 threads from S48-S64.
    CAUSAL_ATTENTION: 12 * 96 * 96,
}
# The attention floor when the fused node runs at precision "bfloat16": its
# bf16 tiles pay from about S 64 (H12 D64 from S 32, H12 D32 and H4 D64 from
# S 64; below, 0.69-0.92x the block per op; 1.47-1.67x from S 32 at 2 threads),
# where float32 needs S 1024 with a mask
# (benchmarks/attention_break_even.py --precision bfloat16 --mask padding, Zen 4
# AVX512-BF16).
BF16_ATTENTION_BREAK_EVEN = 12 * 64 * 64


# Reasons true of a node whatever the rule (NOT_SELECTED is by rule: tune picks (rule, anchor) pairs).
_NODE_REASONS = layout.NODE_REASONS


def one_attention_floor(floors: Mapping[str, int], value: int) -> dict:
    """`floors` with `value` as the floor of every attention block, whatever its mask:
    for floors measured or chosen without that distinction (bfloat16's, tune's 0)."""
    out = {key: v for key, v in floors.items() if key not in ATTENTION_KEYS}
    out["attention"] = value
    return out


def qualified(node: gs.Node) -> str:
    domain = node.domain or ""
    return node.op if domain in DEFAULT_DOMAINS else f"{domain}.{node.op}"


class Engine:
    def __init__(
        self,
        rules: Iterable[Rule],
        ops: frozenset[str],
        report: Report,
        min_elements: Mapping[str, int] = {},
        fuse_symbolic: frozenset[str] = frozenset(),
    ):
        self.by_anchor: dict[tuple[str, str], list[Rule]] = {}
        for rule in rules:  # list order is priority: composite patterns before the single ops they contain
            for domain, op in rule.anchors:
                self.by_anchor.setdefault((domain, op), []).append(rule)
        self.ops = ops
        self.report = report
        self.min_elements = dict(min_elements)
        self.fuse_symbolic = frozenset(fuse_symbolic)

    def run(self, ctx: Context) -> None:
        """Visits every graph, each before the graphs nested in it: a replacement found from
        an anchor may go into a nested graph, which is then visited as rewritten."""
        for scope in ctx.scopes.all:
            self._visit(ctx.subgraph(scope))

    def _visit(self, ctx: Context) -> None:
        gone: set[int] = set()  # ids of nodes a replacement took out (the list below keeps them alive)
        for node in list(ctx.graph.nodes):
            domain = "" if (node.domain or "") in DEFAULT_DOMAINS else node.domain
            for rule in self.by_anchor.get((domain, node.op), []):
                if id(node) in gone:
                    break
                if self._try(ctx, rule, node, gone) in _NODE_REASONS:
                    break  # true of the node whatever the pattern: the next rule would say it again

    def _decide(self, ctx: Context, rule: Rule, node: gs.Node, replaced: bool, reason: str, label: str = "") -> None:
        self.report.add(Decision(label or _label(node), qualified(node), rule.name, replaced, reason, ctx.path))

    def _try(self, ctx: Context, rule: Rule, node: gs.Node, gone: set[int]) -> str:
        """Decides on one rule at one node; returns the reason for keeping it ("" otherwise)."""
        result = rule.match(ctx, node)
        if result is None:
            return ""
        if isinstance(result, str):
            self._decide(ctx, rule, node, False, result)
            return result
        home = self._verdict(ctx, rule, node, result)
        if isinstance(home, str):
            self._decide(ctx, rule, node, False, home)
            return home
        if ctx.select is not None:  # tune's choice for this anchor: the order (and Softmax method) of its nodes
            pick = ctx.select[(rule.name, node.name)]
            ctx = replace(ctx, order=pick.order, softmax_attrs=pick.softmax)
        label = _label(node)  # before the rewrite disconnects the node
        gone.update(id(n) for n in apply(ctx, node, result, home))
        where = "" if home is ctx.scope else f" in {home.path}"
        self._decide(ctx, rule, node, True, f"replaced by {result.summary}{where}", label)
        return ""

    def _placement(self, ctx: Context, anchor: gs.Node, match: Match) -> Union[Scope, str]:
        """The graph the replacement goes in: the one holding every node it replaces, which
        must be the anchor's or nested in it and see the pattern's inputs. Else why not."""
        homes: list[Scope] = []
        for node in match.remove:
            home = ctx.scopes.of(node)
            if home is None:
                return f"pattern node {node.name or node.op} is in no graph of the model"
            if home not in homes:
                homes.append(home)
        if len(homes) > 1:
            homes.sort(key=ctx.scopes.all.index)  # outer graphs first
            return f"pattern spans graphs {_listed([h.path for h in homes])}"
        (home,) = homes
        if not home.inside(ctx.scope):
            return f"pattern lies in {home.path}, outside the anchor's graph {ctx.path}"
        loop = home.loop_below(ctx.scope)
        if loop is not None:
            # An If branch runs at most once; a body once per iteration, while the pattern's part
            # outside it (the Sigmoid of x * Sigmoid(x)) ran once for all of them.
            what = f"{anchor.op} {anchor.name}" if anchor.name else anchor.op
            return (
                f"{what} is outside the {loop.holder.op} body {loop.path}: "
                "the replacement there would compute it on every iteration"
            )
        # The replacement reads what the pattern read (its x included), now from `home`.
        for node in match.remove:
            for tensor in node.inputs:
                if tensor.name and not ctx.scopes.visible(tensor, home):
                    return f"input {tensor.name} is not visible in {home.path}"
        return home

    def _verdict(self, ctx: Context, rule: Rule, anchor: gs.Node, match: Match) -> Union[Scope, str]:
        """The checks every match goes through: the graph its replacement goes in, or why it stays."""
        # A skipped node stays as it is, also when the pattern would only prune it (SiLU's Sigmoid).
        if any(n.name in ctx.skip for n in (*match.remove, *match.prune)):
            return SKIPPED
        # By rule and anchor: x * Sigmoid(x)'s Sigmoid anchors both the silu rule and, when its
        # output is also read elsewhere, the sigmoid rule; tune picks each group on its own.
        if ctx.select is not None and (rule.name, anchor.name) not in ctx.select:
            return NOT_SELECTED
        if rule.family not in self.ops:
            return f"{rule.family} is not among the selected ops"
        home = self._placement(ctx, anchor, match)
        if isinstance(home, str):
            return home
        elem = ctx.elem_type(match.x)
        if elem is None:
            return "element type unknown"
        if elem not in SUPPORTED:
            return f"element type {type_name(elem)} is not supported"
        size = match.size(ctx) if match.size is not None else static_size(ctx.shape(match.x))
        floor = self.min_elements.get(rule.family, 0)
        floor = self.min_elements.get(match.floor_key, floor) if match.floor_key else floor
        if size is not None and size < floor:
            return f"{size} {match.size_what}: below the {floor}-element break-even of {match.cost}"
        if size is None and floor > 0 and match.unknown_size_reason and rule.family not in self.fuse_symbolic:
            return match.unknown_size_reason
        # Rules follow a pattern through its fitting reader and leave other readers to this one check.
        inner = [t for n in match.remove for t in n.outputs if t is not match.output]
        leak = ctx.first_other_consumer(inner, match.remove)
        if leak is not None:
            return f"intermediate {leak.name} has other consumers"
        if ctx.keep_conv_layout:
            if rule.conv_activation:
                return layout.conv_layout_reason(ctx, rule, anchor, match.x, match.output) or home
        elif layout.is_blocked(match.x) and not _elementwise(rule, anchor, match):
            return layout.BLOCKED_REASON
        return home


def static_size(shape) -> "int | None":
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


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def apply(ctx: Context, anchor: gs.Node, match: Match, home: Scope) -> list[gs.Node]:
    """Replace match.remove, all in `home`'s graph, by the built nodes, placed where the last
    removed node was (all the pattern's inputs are computed before it, so the order stays
    topological); then drop what only the pattern read, in whichever graph it lives.
    Returns every node taken out."""
    graph = home.graph
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
        gs.Node(
            spec.op,
            ctx.names.node(f"{base}/quake_{spec.op}"),
            spec.attrs,
            spec.inputs,
            spec.outputs,
            domain=spec.domain,
        )
        for spec in match.build(ctx)
    ]
    nodes = []
    for i, node in enumerate(graph.nodes):
        if id(node) not in removed:
            nodes.append(node)
        if i == last:
            nodes.extend(created)
    graph.nodes = nodes
    ctx.scopes.forget(match.remove)
    ctx.scopes.place(created, home)
    return list(match.remove) + _prune(ctx.scopes, maybe_dead)


def _prune(scopes: Scopes, candidates: list[gs.Node]) -> list[gs.Node]:
    """Drop candidates nothing reads any more, in any graph (a reader in a nested graph,
    at any depth, or a graph output keeps one); repeats because dropping one can free
    its producer. Returns the dropped nodes."""
    dropped: dict[int, tuple[gs.Node, Scope]] = {}
    changed = True
    while changed:
        changed = False
        for node in candidates:
            home = scopes.of(node)
            if home is None or id(node) in dropped:  # gone already (with this pattern or an earlier one)
                continue
            if any(t.outputs or scopes.is_output(t) for t in node.outputs):
                continue
            node.inputs.clear()
            node.outputs.clear()
            dropped[id(node)] = (node, home)
            changed = True
    for home in {id(h): h for _, h in dropped.values()}.values():
        home.graph.nodes = [n for n in home.graph.nodes if id(n) not in dropped]
    scopes.forget(n for n, _ in dropped.values())
    return [n for n, _ in dropped.values()]


def _label(node: gs.Node) -> str:
    """The node's name, or for an unnamed node its first output's, so that
    --explain and the report say which node it was."""
    if node.name:
        return node.name
    return f"(unnamed, output {node.outputs[0].name})" if node.outputs else "(unnamed)"
