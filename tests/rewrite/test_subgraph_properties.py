"""Property tests: every rule's pattern split between a graph and the If / Loop / Scan bodies in it.

For each pattern family (the single ops Softmax (opset 20, and opset 11 on
axis 0, replaced between Flatten and Reshape), LogSoftmax, Exp, Sigmoid,
Gelu-20, ONNX Swish and the com.microsoft Gelu / FastGelu (with and without
its own bias) / BiasGelu / QuickGelu; x * Sigmoid(x) and x * Sigmoid(beta *
x); the erf- and tanh-GELU decompositions of gelu_forms.py in every tail,
scale, cube and operand order; a bias Add in front of the GELUs)
hypothesis draws:

- one or two nested bodies, each an If then-branch, a Loop body or a Scan
  body (If else-branches return a copy of x, so both conditions are run);
- cut points in the pattern's node list: the first nodes stay in the main
  graph, the next in the outer body, the rest in the inner one (every cut,
  0 and "all outside" included); the constants are initializers of the main
  graph or Constant nodes placed before their first reader, so cuts fall
  between them too; the body always reads x and the pattern's constants from
  the outer scope, and returns the pattern's result (through an Identity
  when it is computed outside);
- in Loop / Scan bodies, sometimes the body's own value in place of x: the
  loop-carried copy of x or the Scan's slice (equal to x in value, but not
  the outer value, so a pattern read across it is not one pattern);
- sometimes an intermediate of the pattern returned as well, from the
  innermost body (an outer one through an Identity) or by the main graph.

For every example: the input passes onnx's full check (the generator is
right); rewrite_model raises nothing; the result passes the full check;
ONNX Runtime (graph optimizations disabled on both sides, com.quake
registered) gives every output within its bound for each If condition; a
second rewrite changes nothing, byte for byte. And the decision is the one
the design promises: a pattern whose nodes are in one graph, none of its
intermediates read elsewhere, is replaced; one split between graphs is kept
with "pattern spans graphs ..."; x * Sigmoid(x) with its Mul in a nested
graph is replaced there through If branches and kept, "... on every
iteration", through a Loop or Scan body.

Bounds, from test_properties.py's per-op budgets (order 1 15x looser): the
pattern's result within the replaced op's own bound, or, for the SiLUs, the
larger of that and |x| times the Sigmoid's (the Sigmoid replaced alone when
the SiLU is kept); an exposed Sigmoid output within the Sigmoid's bound;
every other intermediate as the original (nothing replaces it), to float
rounding. |x| <= 3, 3.5 for the GELUs (a bias may be added first).

Examples: 24 for each of the 4 composite families, 10 for each of the 12
single-op ones, 216 in all (derandomize=True: the same ones every run);
15-25 s wall clock (about 16 s of CPU) on the shared 2-core test machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from quake_onnx.rewrite import rewrite_model
from quake_onnx.schemas import register_schemas

from .builders import F32, Graph
from .gelu_forms import TAILS, erf_gelu, tanh_gelu
from .nesting import TRIPS, compare, info
from .test_properties import Bounds

SHAPE = [3, 8]
BIAS = np.linspace(-0.5, 0.5, SHAPE[-1])
MS = ("com.microsoft", 1)
SCALES = [0.5, 1.702]  # beta of x * Sigmoid(beta * x)


@dataclass(frozen=True)
class Family:
    """A rule's pattern: `make(g, x, draw)` appends its nodes to g and returns the result."""

    rule: str
    make: Callable
    bound: str  # "softmax", "logsoftmax", "exp", "sigmoid", "silu", "gelu_erf", "gelu_tanh"
    opset: int = 20
    ms: bool = False
    may_bias: bool = False  # a bias Add in front (the GELUs fold it in)
    row: int = SHAPE[-1]  # elements a Softmax normalises together
    silu: bool = False  # x * Sigmoid(x): its Mul may be replaced in a graph nested in the Sigmoid's


def _contrib(op, **attrs):
    def make(g, x, draw):
        own_bias = op == "BiasGelu" or op == "FastGelu" and draw(st.booleans())
        inputs = [x, g.const(BIAS, "gelu_bias")] if own_bias else [x]
        return g.node(op, inputs, name="contrib", domain="com.microsoft", **attrs)

    return make


def _silu(g, x, draw):
    s = g.node("Sigmoid", [x], name="sig")
    return g.node("Mul", draw(st.sampled_from([[x, s], [s, x]])), name="mul")


def _swish_form(g, x, draw):
    beta = g.const(draw(st.sampled_from(SCALES)))
    a = g.node("Mul", draw(st.sampled_from([[x, beta], [beta, x]])), name="scale")
    s = g.node("Sigmoid", [a], name="sig")
    return g.node("Mul", draw(st.sampled_from([[x, s], [s, x]])), name="mul")


def _erf(g, x, draw):
    return erf_gelu(g, x, draw(st.sampled_from(TAILS)), draw(st.sampled_from(["div", "mul"])), draw(st.booleans()))


def _tanh(g, x, draw):
    return tanh_gelu(
        g, x, draw(st.sampled_from(TAILS)), draw(st.sampled_from(["pow", "mul", "mulpow"])), draw(st.booleans())
    )


def _single(op, **attrs):
    return lambda g, x, draw: g.node(op, [x], name=op.lower(), **attrs)


FAMILIES = {
    "softmax": Family("softmax", _single("Softmax", axis=-1), "softmax"),
    # Before opset 13 Softmax(axis=0) normalises all of x at once: Flatten, Softmax, Reshape.
    "softmax_opset11": Family("softmax", _single("Softmax", axis=0), "softmax", opset=11, row=SHAPE[0] * SHAPE[1]),
    "logsoftmax": Family("logsoftmax", _single("LogSoftmax", axis=-1), "logsoftmax"),
    "exp": Family("exp", _single("Exp"), "exp"),
    "sigmoid": Family("sigmoid", _single("Sigmoid"), "sigmoid"),
    "gelu_none": Family("gelu", _single("Gelu", approximate="none"), "gelu_erf", may_bias=True),
    "gelu_tanh": Family("gelu", _single("Gelu", approximate="tanh"), "gelu_tanh", may_bias=True),
    "swish": Family("swish", _single("Swish", alpha=1.702), "silu", opset=24),
    "ms_gelu": Family("contrib_gelu", _contrib("Gelu"), "gelu_erf", ms=True, may_bias=True),
    "ms_fast_gelu": Family("contrib_gelu", _contrib("FastGelu"), "gelu_tanh", ms=True, may_bias=True),
    "ms_bias_gelu": Family("contrib_gelu", _contrib("BiasGelu"), "gelu_erf", ms=True),
    "ms_quick_gelu": Family("quick_gelu", _contrib("QuickGelu", alpha=1.702), "silu", ms=True),
    "silu": Family("silu", _silu, "silu", silu=True),
    "swish_form": Family("silu", _swish_form, "silu", silu=True),
    "erf_gelu": Family("erf_gelu", _erf, "gelu_erf", may_bias=True),
    "tanh_gelu": Family("tanh_gelu", _tanh, "gelu_tanh", may_bias=True),
}


def _bias(g: Graph, x: str) -> str:
    return g.node("Add", [x, g.const(BIAS, "bias")], name="bias_add")


# --- the model -----------------------------------------------------------------------------------


@dataclass
class Level:
    """One graph of the generated model: main (index 0) or a body nested in the previous one."""

    kind: str  # "main", "If", "Loop", "Scan"
    path: str
    x: str  # what the pattern's x is called here (the outer X, or the body's own copy)
    nodes: list = field(default_factory=list)


@dataclass
class Case:
    model: onnx.ModelProto
    feeds: list[dict]
    order: int
    bounds: list[float]  # per main-graph output
    expect: Optional[Callable]  # checks the rule's decision, None when no promise holds


def _constant_nodes(g: Graph) -> None:
    """Initializers as Constant nodes, each right before its first reader."""
    consts = {t.name: t for t in g.inits}
    nodes, placed = [], set()
    for node in g.nodes:
        for name in node.input:
            if name in consts and name not in placed:
                nodes.append(helper.make_node("Constant", [], [name], name=f"const_{name}", value=consts[name]))
                placed.add(name)
        nodes.append(node)
    g.nodes, g.inits = nodes, []


def _stacked(x: str, out: str, prefix: str, copies: int, opset: int) -> list[onnx.NodeProto]:
    """`out` = x with `copies` new leading axes of TRIPS each (a Scan's input, an else branch's
    stand-in for stacked outputs); from opset 13 reads the initializer "axis0" = [0]."""
    nodes, current = [], x
    for i in range(copies):
        one, many = f"{prefix}_u{i}", (out if i == copies - 1 else f"{prefix}_c{i}")
        axes = {"inputs": [current, "axis0"]} if opset >= 13 else {"inputs": [current], "axes": [0]}
        nodes += [
            helper.make_node("Unsqueeze", outputs=[one], name=f"{prefix}_unsqueeze{i}", **axes),
            helper.make_node("Concat", [one] * TRIPS, [many], name=f"{prefix}_concat{i}", axis=0),
        ]
        current = many
    if not copies:
        nodes.append(helper.make_node("Identity", [x], [out], name=f"{prefix}_identity"))
    return nodes


def build(family: Family, draw) -> Case:
    """One drawn case: the pattern split between graphs, the model, its feeds, bounds and promise."""
    g = Graph()
    bias = family.may_bias and draw(st.booleans())
    y = family.make(g, _bias(g, "X") if bias else "X", draw)
    if draw(st.booleans()):
        _constant_nodes(g)
    pattern = list(g.nodes)
    order = draw(st.sampled_from([2, 1, 3]))
    levels = _levels(draw)
    level_of = _split(pattern, levels, draw)

    ops = [n for n in pattern if n.op_type != "Constant"]
    exposed = draw(st.sampled_from([None, *[n.output[0] for n in ops[:-1]]]))
    in_main = exposed is not None and level_of[exposed] == 0 and draw(st.booleans())
    sources = _return(levels, level_of, [y] + ([exposed] if exposed and not in_main else []))
    outs = [(r, list(SHAPE)) for r in sources]  # (name, shape) returned by the current level
    for i in range(len(levels) - 1, 0, -1):
        outs = _wrap(levels, i, outs, sources, family.opset)
    if in_main:
        outs.append((exposed, list(SHAPE)))
        sources[exposed] = exposed
    model = _model(family, levels, outs, g.inits)

    x = np.random.default_rng(draw(st.integers(0, 2**16))).uniform(-3, 3, SHAPE).astype(np.float32)
    feeds = [{"X": x, "C": np.array(c)} for c in (True, False)] if any(lv.kind == "If" for lv in levels) else [{"X": x}]
    b = Bounds(F32, order)
    m = 3.5 if family.bound.startswith("gelu") else 3.0  # a GELU's x may carry a bias in [-0.5, 0.5]
    gate = {n.output[0] for n in ops if n.op_type == "Sigmoid"}
    bounds = [
        _bound(family, b, m) if sources[name] == y else b.own("sigmoid") + b.r(1.0) if sources[name] in gate else 1e-5
        for name, _ in outs
    ]
    where = [level_of[n.output[0]] for n in ops]
    return Case(model, feeds, order, bounds, _expectation(family, levels, ops, where, exposed, bias))


def _levels(draw) -> list[Level]:
    """Main and one or two bodies nested in it; a Loop / Scan body may read its own copy of x."""
    levels = [Level("main", "main", "X")]
    for i, kind in enumerate(draw(st.lists(st.sampled_from(["If", "Loop", "Scan"]), min_size=1, max_size=2)), 1):
        outer = levels[-1]
        path = f"{outer.path}/L{i}.{'then_branch' if kind == 'If' else 'body'}"
        own = {"Loop": f"v{i}", "Scan": f"s{i}"}.get(kind)
        levels.append(Level(kind, path, own if own and draw(st.booleans()) else outer.x))
    return levels


def _split(pattern: list, levels: list[Level], draw) -> dict[str, int]:
    """Deals the pattern's nodes to the levels at drawn cut points (x read as the level calls
    it); returns the level of every tensor the pattern computes."""
    n = len(pattern)
    inside = st.integers(1, n - 1) if n > 1 else st.integers(0, n)  # cuts through the pattern, mostly
    cuts = sorted(draw(st.one_of(inside, st.integers(0, n))) for _ in levels[1:])
    level_of = {}
    for j, node in enumerate(pattern):
        here = sum(1 for c in cuts if j >= c)
        node.input[:] = [levels[here].x if name == "X" else name for name in node.input]
        levels[here].nodes.append(node)
        level_of.update((out, here) for out in node.output)
    return level_of


def _return(levels: list[Level], level_of: dict[str, int], tensors: list[str]) -> dict[str, str]:
    """Makes the innermost body return `tensors` (through an Identity when computed outside it);
    returns what it returns -> the pattern's tensor it is."""
    deepest, sources = levels[-1], {}
    for t in tensors:
        if level_of[t] == len(levels) - 1:
            sources[t] = t
        else:
            deepest.nodes.append(helper.make_node("Identity", [t], [f"read_{t}"], name=f"read_{t}"))
            sources[f"read_{t}"] = t
    return sources


def _model(family: Family, levels: list[Level], outs: list, inits: list) -> onnx.ModelProto:
    inputs = [info("X")] + ([info("C", [], TensorProto.BOOL)] if any(lv.kind == "If" for lv in levels) else [])
    graph = helper.make_graph(levels[0].nodes, "main", inputs, [info(n, s) for n, s in outs], initializer=inits)
    read = _read_names(graph)
    graph.initializer.extend(  # the trip count, and the axis stacking a Scan's input, where read
        numpy_helper.from_array(np.array(v, np.int64), k) for k, v in (("trips", TRIPS), ("axis0", [0])) if k in read
    )
    opsets = [helper.make_opsetid("", family.opset)] + ([helper.make_opsetid(*MS)] if family.ms else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def _read_names(graph: onnx.GraphProto) -> set[str]:
    """Every name a node of `graph` or of its subgraphs reads."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            if attr.HasField("g"):
                names |= _read_names(attr.g)
    return names


def _wrap(levels: list[Level], i: int, outs: list, sources: dict, opset: int) -> list:
    """Puts level i's body into its holder node in level i - 1, returning `outs` (name, shape);
    returns what level i - 1 then holds: the holder's outputs (stacked by a Loop or Scan)."""
    body, outer, name = levels[i], levels[i - 1], f"L{i}"
    results = [(f"{name}_{n}", s if body.kind == "If" else [TRIPS, *s]) for n, s in outs]
    sources.update((r, sources[n]) for (n, _), (r, _) in zip(outs, results))
    make = {"If": _if, "Loop": _loop, "Scan": _scan}[body.kind]
    outer.nodes += make(name, i, body.nodes, outs, [r for r, _ in results], outer.x, opset)
    return results


def _if(name, i, nodes, outs, results, x, opset) -> list[onnx.NodeProto]:
    """The body as the then branch; the else branch returns copies of x shaped like `outs`."""
    then = helper.make_graph(nodes, f"{name}_then", [], [info(n, s) for n, s in outs])
    other_nodes, other_outs = [], []
    for k, (_, s) in enumerate(outs):
        other_nodes += _stacked(x, f"{name}_else{k}", f"{name}_else{k}", len(s) - len(SHAPE), opset)
        other_outs.append(info(f"{name}_else{k}", s))
    other = helper.make_graph(other_nodes, f"{name}_else", [], other_outs)
    return [helper.make_node("If", ["C"], results, name=name, then_branch=then, else_branch=other)]


def _loop(name, i, nodes, outs, results, x, opset) -> list[onnx.NodeProto]:
    """TRIPS iterations carrying v{i} = x unchanged; `outs` are the scan outputs."""
    carried = f"v{i}"
    keep = [
        helper.make_node("Identity", [f"cond{i}"], [f"cond{i}_out"], name=f"{name}_cond"),
        helper.make_node("Identity", [carried], [f"{carried}_out"], name=f"{name}_carry"),
    ]
    graph = helper.make_graph(
        keep + nodes,
        f"{name}_body",
        [info(f"iter{i}", [], TensorProto.INT64), info(f"cond{i}", [], TensorProto.BOOL), info(carried)],
        [info(f"cond{i}_out", [], TensorProto.BOOL), info(f"{carried}_out"), *[info(n, s) for n, s in outs]],
    )
    return [helper.make_node("Loop", ["trips", "", x], [f"{name}_final", *results], name=name, body=graph)]


def _scan(name, i, nodes, outs, results, x, opset) -> list[onnx.NodeProto]:
    """A scan over TRIPS stacked copies of x, each seen as s{i}."""
    stacked = f"{name}_stacked"
    graph = helper.make_graph(nodes, f"{name}_body", [info(f"s{i}")], [info(n, s) for n, s in outs])
    return _stacked(x, stacked, f"{name}_stack", 1, opset) + [
        helper.make_node("Scan", [stacked], results, name=name, body=graph, num_scan_inputs=1)
    ]


def _bound(family: Family, b: Bounds, m: float) -> float:
    kind, n = family.bound, family.row
    if kind == "softmax":
        return b.own("softmax") + b.r(1.0) * (n + 1)
    if kind == "logsoftmax":
        mo = 2 * m + math.log(n)
        return b.own("logsoftmax") + b.r(mo) * (n + 1)
    if kind == "exp":
        return math.exp(m) * b.exp_rel + b.r(math.exp(m))
    if kind == "sigmoid":
        return b.own("sigmoid") + b.r(1.0)
    if kind == "silu":  # replaced whole, or only its Sigmoid (the SiLU kept)
        return max(b.own("silu"), m * (b.own("sigmoid") + b.r(1.0))) + 2 * b.r(m)
    return b.own(kind) + 2 * b.r(m)


# --- what the design promises --------------------------------------------------------------------


def _expectation(family: Family, levels: list[Level], ops: list, where: list[int], exposed, bias: bool):
    """A check of the rule's decision, or None where the pattern is not one any more (x read as
    two different values: the outer one and a body's own copy). ops: the pattern's nodes but
    Constants; where: their levels."""
    core = ops[1:] if bias else ops  # the bias Add may stay where it is
    core_levels = where[1:] if bias else where
    readers = {levels[lv].x for n, lv in zip(ops, where) if levels[lv].x in n.input}
    if len(readers) > 1:
        return None
    exposed_inside = exposed is not None and exposed in {o for n in core for o in n.output}
    paths = [levels[lv].path for lv in sorted(set(core_levels))]

    if family.silu:
        sig, mul = core_levels[-2], core_levels[-1]
        crossed = {lv.kind for lv in levels[sig + 1 : mul + 1]}

        def check(d):
            if mul == sig:
                assert d.replaced, d
            elif crossed & {"Loop", "Scan"}:
                assert not d.replaced and d.reason.endswith(
                    "the replacement there would compute it on every iteration"
                ), d
            else:
                assert d.replaced and d.reason.endswith(f" in {levels[mul].path}"), d

        return check

    def check(d):
        if len(paths) > 1:
            assert not d.replaced and d.reason.startswith("pattern spans graphs ") and paths[0] in d.reason, d
        elif exposed_inside:
            assert not d.replaced and d.reason.endswith("has other consumers"), d
        else:
            assert d.replaced, d

    return check


# --- the tests -----------------------------------------------------------------------------------

COMPOSITE = [name for name, f in FAMILIES.items() if f.silu or name in ("erf_gelu", "tanh_gelu")]
SINGLE = [name for name in FAMILIES if name not in COMPOSITE]
COMPOSITE_EXAMPLES, SINGLE_EXAMPLES = 24, 10


def check(family: Family, draw) -> None:
    """Builds one case and asserts everything the module docstring lists."""
    case = build(family, draw)
    register_schemas()
    onnx.checker.check_model(case.model, full_check=True)

    before = case.model.SerializeToString()
    out, report = rewrite_model(case.model, order=case.order)
    assert case.model.SerializeToString() == before, "rewrite_model mutated its input"
    onnx.checker.check_model(out, full_check=True)
    assert all(d.replaced or d.reason for d in report.decisions)
    if case.expect is not None:
        found = [d for d in report.decisions if d.rule == family.rule]
        assert len(found) == 1, report.decisions
        case.expect(found[0])

    for feeds in case.feeds:
        compare(case.model, out, feeds, case.bounds)

    again, second = rewrite_model(out, order=case.order)
    assert not second.replaced, second.decisions
    assert again.SerializeToString() == out.SerializeToString()


SETTINGS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("name", COMPOSITE)
@settings(max_examples=COMPOSITE_EXAMPLES, **SETTINGS)
@given(data=st.data())
def test_composite_pattern_across_bodies(name, data):
    check(FAMILIES[name], data.draw)


@pytest.mark.parametrize("name", SINGLE)
@settings(max_examples=SINGLE_EXAMPLES, **SETTINGS)
@given(data=st.data())
def test_single_op_across_bodies(name, data):
    check(FAMILIES[name], data.draw)
