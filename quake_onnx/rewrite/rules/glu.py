"""act(gate) * up -> com.quake Glu: the gated MLP of Llama-family decoders (SwiGLU),
Gemma and T5 v1.1 (GeGLU), and Phi-3's fused gate_up projection.

Anchored at every node an activation rule starts from, and tried before those
rules (it takes their whole pattern): the activation is recognised by the
activation rule's own matcher, so every form they know is a gate here: SiLU
x * Sigmoid(x) and x * Sigmoid(beta x), ONNX Swish, com.microsoft QuickGelu
(silu with alpha), every erf/tanh GELU decomposition, ONNX Gelu,
com.microsoft Gelu / FastGelu / BiasGelu. Its output must then be read by a
Mul whose other operand, up, is computed (a constant factor is a scaling, not
a gate). Forms:

  act(g) * u, u of g's shape          -> Glu(g, u)
  act(h[..., :H]) * h[..., H:]        -> Glu(h)   (the halves form: a Split or two
                                          Slices cut h's last axis in two equal halves;
                                          Slice bounds computed from h's static last
                                          dimension, as torch exports chunk(2), count)
  BiasGelu(x, bias) * u (FastGelu with a bias likewise)
                                      -> Add(x, bias), Glu(Add, u)

The bias Add stays a node of its own because com.quake Glu has no bias
input. It then directly follows its MatMul, where ORT's MatMulAddFusion folds
it into a Gemm (the bias then costs no pass); left unfused it moves as many
bytes as the Gelu(x, bias) + Mul it replaces. A bias Add that a GELU
decomposition's matcher would fold into com.quake Gelu stays in the graph
for the same reason, in front of Glu.

Refused, with the reason, leaving the activation to its own rule (the next
rule at the same anchor): up's shape not known equal to the gate's (Glu does
not broadcast), a Split or Slice pair of the last axis into unequal parts, and
through the engine an intermediate read elsewhere (the activation's output
read by another node, a Sigmoid shared in the halves form, ...). A Split along
another axis, or halves in the other order (act(second) * first), is no
halves form: its outputs are a gate and an up like any other (Glu with B, the
Split kept). SiLU's own x * Sigmoid(x) is never a gate by itself: it needs a
second Mul by a computed up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import onnx_graphsurgeon as gs

from ..context import Context
from ..match import const_value, is_add, is_op, other_operand, producer, reader
from ..rule import Match, NodeSpec, Rule, quake
from . import contrib_gelu, erf_gelu, gelu, quick_gelu, silu, swish, tanh_gelu

MS = "com.microsoft"
# The activation rules by the node they start from.
ACTIVATION_RULES = {
    ("", "Sigmoid"): silu.RULE,
    ("", "Swish"): swish.RULE,
    (MS, "QuickGelu"): quick_gelu.RULE,
    ("", "Erf"): erf_gelu.RULE,
    ("", "Tanh"): tanh_gelu.RULE,
    ("", "Gelu"): gelu.RULE,
    **{anchor: contrib_gelu.RULE for anchor in contrib_gelu.RULE.anchors},
}
GELU_ACTIVATION = {"none": "gelu", "tanh": "gelu_tanh"}


@dataclass
class Gate:
    """An activation act(x) = y as its rule matched it."""

    x: gs.Tensor
    nodes: list[gs.Node]  # from x to y
    y: gs.Tensor
    activation: str  # a com.quake Glu activation
    attrs: dict  # alpha for silu
    bias: Optional[gs.Tensor] = None  # BiasGelu's / FastGelu's own bias input
    prune: list[gs.Node] = field(default_factory=list)  # SiLU's Sigmoid (and beta * x)


def _gate(ctx: Context, anchor: gs.Node) -> Optional[Gate]:
    """The activation starting at `anchor`, or None (not one, or one its own rule refuses)."""
    domain = "" if (anchor.domain or "") in ("", "ai.onnx") else anchor.domain
    found = ACTIVATION_RULES[(domain, anchor.op)].match(ctx, anchor)
    if not isinstance(found, Match):
        return None
    (spec,) = found.build(ctx)
    nodes = list(found.remove)
    x = found.x
    bias = spec.inputs[1] if len(spec.inputs) > 1 else None
    if bias is not None and nodes[0] is not anchor and is_add(nodes[0]):
        # The matcher folded a preceding bias Add into com.quake Gelu: it stays, and its sum is the gate.
        x, bias, nodes = nodes[0].outputs[0], None, nodes[1:]
    if spec.op == "Silu":
        activation, attrs = "silu", {"alpha": float(spec.attrs["alpha"])}
    else:
        activation, attrs = GELU_ACTIVATION[spec.attrs["approximate"]], {}
    return Gate(x, nodes, found.output, activation, attrs, bias, list(found.prune))


def _same_shape(a: Optional[list], b: Optional[list]) -> bool:
    return a is not None and b is not None and len(a) == len(b) and all(d is not None and d == e for d, e in zip(a, b))


def _shape_text(shape: Optional[list]) -> str:
    return "unknown" if shape is None else "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _shape_reason(g: gs.Tensor, g_shape: Optional[list], u: gs.Tensor, u_shape: Optional[list]) -> str:
    static = g_shape is not None and u_shape is not None and all(isinstance(d, int) for d in [*g_shape, *u_shape])
    if static:
        return (
            f"up {u.name} {_shape_text(u_shape)} and gate {g.name} {_shape_text(g_shape)} differ: "
            "com.quake Glu takes equal shapes (no broadcasting)"
        )
    return (
        f"shapes of gate {g.name} {_shape_text(g_shape)} and up {u.name} {_shape_text(u_shape)} "
        "are not known to be equal (com.quake Glu takes equal shapes)"
    )


def _last_axis(ctx: Context, h: gs.Tensor, axis: int) -> bool:
    rank = ctx.rank(h)
    return rank is not None and axis in (-1, rank - 1)


def _split_halves(ctx: Context, split: gs.Node, h: gs.Tensor) -> Union[bool, str]:
    """Whether a two-output Split of the last axis cuts h in equal halves (True), is
    no halves form (False: another axis, computed sizes), or why its parts are unequal."""
    if not _last_axis(ctx, h, int(split.attrs.get("axis", 0))):
        return False
    sizes = split.attrs.get("split")  # opset < 13
    if len(split.inputs) > 1 and split.inputs[1].name:
        sizes = const_value(split.inputs[1])
        if sizes is None:
            return False  # the parts' shapes decide
    if sizes is not None:
        sizes = [int(s) for s in np.asarray(sizes).ravel()]
        if sizes[0] != sizes[1]:
            return f"Split of {h.name} cuts the last axis into {sizes[0]} + {sizes[1]}, not two equal halves"
        return True
    last = (ctx.shape(h) or [None])[-1]
    if isinstance(last, int) and last % 2:
        return f"Split of {h.name} cuts an odd last axis ({last}) into unequal parts"
    return True


# Integer ops of the slice bounds exporters compute from a shape (torch's chunk:
# (Shape(h)[-1] + 1) / 2 * k); ONNX integer Div truncates toward zero.
_INDEX_BINARY = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": lambda a, b: int(a / b) if b else None,
}
_INDEX_PASS = ("Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape")
_INDEX_DEPTH = 8


def _index_value(ctx: Context, t: gs.Tensor, nodes: list[gs.Node], depth: int = _INDEX_DEPTH) -> Optional[int]:
    """A one-element integer: a constant, or computed from constants and static dimensions
    of a Shape (the nodes computing it are appended to `nodes`); None otherwise."""
    value = const_value(t)
    if value is not None:
        value = np.asarray(value)
        return int(value.ravel()[0]) if value.size == 1 and value.dtype.kind in "iu" else None
    node = producer(t)
    if node is None or depth == 0 or (node.domain or "") not in ("", "ai.onnx"):
        return None
    if node.op in _INDEX_PASS:
        found = _index_value(ctx, node.inputs[0], nodes, depth - 1)
    elif node.op in _INDEX_BINARY and len(node.inputs) == 2:
        a, b = (_index_value(ctx, x, nodes, depth - 1) for x in node.inputs)
        found = None if a is None or b is None else _INDEX_BINARY[node.op](a, b)
    elif node.op == "Gather" and int(node.attrs.get("axis", 0)) == 0 and is_op(producer(node.inputs[0]), "Shape"):
        found = _shape_dim(ctx, producer(node.inputs[0]), _index_value(ctx, node.inputs[1], nodes, depth - 1))
        if found is not None:
            nodes.append(producer(node.inputs[0]))
    else:
        return None
    if found is not None:
        nodes.append(node)
    return found


def _shape_dim(ctx: Context, shape_node: gs.Node, index: Optional[int]) -> Optional[int]:
    """Element `index` of Shape(x) (opset 15's start / end included) when that dimension is static."""
    dims = ctx.shape(shape_node.inputs[0])
    if dims is None or index is None:
        return None
    dims = dims[int(shape_node.attrs.get("start", 0)) : shape_node.attrs.get("end")]
    if not -len(dims) <= index < len(dims):
        return None
    dim = dims[index]
    return dim if isinstance(dim, int) else None


def _slice_bounds(ctx: Context, node: gs.Node, size: int, nodes: list[gs.Node]) -> Optional[tuple[int, int]]:
    """[start, end) of a Slice of the last axis with step 1 and known bounds (constants, or
    computed from static dimensions), clamped to the axis (`size`), or None."""
    if len(node.inputs) < 3:
        return None  # opset < 10: bounds as attributes, which exporters of gated MLPs do not write
    present = [t if t.name else None for t in node.inputs[1:5]]
    values = [None if t is None else _index_value(ctx, t, nodes) for t in present]
    if any(v is None and t is not None for v, t in zip(values, present)):
        return None
    starts, ends = values[0], values[1]
    axis = values[2] if len(values) > 2 and values[2] is not None else 0
    step = values[3] if len(values) > 3 and values[3] is not None else 1
    if step != 1 or not _last_axis(ctx, node.inputs[0], axis):
        return None

    def clamp(i: int) -> int:
        return min(max(i + size if i < 0 else i, 0), size)

    return clamp(starts), clamp(ends)


def _slice_halves(
    ctx: Context, first: gs.Node, second: gs.Node, h: gs.Tensor, nodes: list[gs.Node]
) -> Union[bool, str]:
    """Whether two Slices of h are h[..., :H/2] and h[..., H/2:] (True), not of that kind
    (False: another axis, a step, unknown bounds), or why their halves are unequal."""
    size = (ctx.shape(h) or [None])[-1]
    if not isinstance(size, int):
        return False  # a symbolic last axis: the parts' shapes decide
    a, b = _slice_bounds(ctx, first, size, nodes), _slice_bounds(ctx, second, size, nodes)
    if a is None or b is None or a[0] != 0 or a[1] != b[0] or b[1] != size:
        return False
    if 2 * a[1] != size:
        return f"Slices of {h.name} cut the last axis into {a[1]} + {size - a[1]}, not two equal halves"
    return True


@dataclass
class Halves:
    h: gs.Tensor  # the tensor cut in two
    cut: list[gs.Node]  # the Split, or the two Slices
    bounds: list[gs.Node]  # nodes computing the Slices' bounds: dropped when nothing else reads them


def _halves(ctx: Context, g: gs.Tensor, u: gs.Tensor) -> Union[None, str, Halves]:
    """The cut when g and u are the first and second half of h's last axis; a reason when
    they are unequal parts of it; None when they are no halves form."""
    pg, pu = producer(g), producer(u)
    if pg is None or pu is None:
        return None
    bounds: list[gs.Node] = []
    if pg is pu and is_op(pg, "Split") and list(pg.outputs) == [g, u]:
        verdict, h, cut = _split_halves(ctx, pg, pg.inputs[0]), pg.inputs[0], [pg]
    elif is_op(pg, "Slice") and is_op(pu, "Slice") and pg.inputs[0] is pu.inputs[0]:
        verdict, h, cut = _slice_halves(ctx, pg, pu, pg.inputs[0], bounds), pg.inputs[0], [pg, pu]
    else:
        return None
    if isinstance(verdict, str):
        return verdict
    return Halves(h, cut, list({id(n): n for n in bounds}.values())) if verdict else None


def match(ctx: Context, anchor: gs.Node) -> Optional[Union[Match, str]]:
    gate = _gate(ctx, anchor)
    if gate is None:
        return None
    mul = reader(gate.y, "Mul")
    up = other_operand(mul, gate.y) if mul is not None else None
    # act(x) * act(x), or a constant factor: no gated MLP.
    if up is None or up is gate.y or isinstance(up, gs.Constant) or const_value(up) is not None:
        return None
    pattern = [*gate.nodes, *gate.prune, mul]
    halves = _halves(ctx, gate.x, up)
    if isinstance(halves, str):
        return halves
    # The halves form takes the cut out too: only when nothing else reads the halves (or a
    # shared Sigmoid); otherwise they are a gate and an up like any other.
    if (
        halves is not None
        and gate.bias is None
        and ctx.first_other_consumer([gate.x, up, *(t for n in gate.prune for t in n.outputs)], pattern) is None
    ):
        return _glu(
            ctx, gate, mul, [halves.h], halves.h, [*halves.cut, *pattern], halves.bounds, "halves of one tensor"
        )
    g_shape, u_shape = ctx.shape(gate.x), ctx.shape(up)
    if not _same_shape(g_shape, u_shape):
        return _shape_reason(gate.x, g_shape, up, u_shape)
    return _glu(ctx, gate, mul, [gate.x, up], gate.x, [*gate.nodes, mul], gate.prune, "gate and up")


def _glu(
    ctx: Context,
    gate: Gate,
    mul: gs.Node,
    inputs: list[gs.Tensor],
    x: gs.Tensor,
    remove: list[gs.Node],
    prune: list[gs.Node],
    form: str,
) -> Match:
    y = mul.outputs[0]
    attrs = {"activation": gate.activation, **gate.attrs}
    bias = gate.bias

    def build(ctx: Context) -> list[NodeSpec]:
        if bias is None:
            return [quake("Glu", inputs, [y], ctx, **attrs)]
        biased = ctx.variable(f"{gate.x.name}_biased")
        return [
            NodeSpec("Add", [gate.x, bias], [biased], domain=""),
            quake("Glu", [biased, *inputs[1:]], [y], ctx, **attrs),
        ]

    alpha = f", alpha={gate.attrs['alpha']:g}" if "alpha" in gate.attrs else ""
    summary = f"com.quake Glu ({gate.activation}{alpha}, {form}{', bias Add kept' if bias is not None else ''})"
    return Match(x=x, remove=remove, output=y, build=build, summary=summary, prune=prune)


RULE = Rule("glu", "glu", tuple(ACTIVATION_RULES), match, conv_activation=True)
