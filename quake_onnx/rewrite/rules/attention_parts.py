"""Pieces shared by the attention rules: what feeds Q, K and V (scales, K's
transpose, the repeat of K/V heads), masks (causal proof, additive
broadcasting, bool to additive) and the com.quake Attention node.

Shapes follow com.quake Attention (docs/ops.md, "Attention"): Q [..., Sq, D],
K [..., Skv, D] or [..., D, Skv] (k_transposed), V [..., Skv, Dv], axis -3 the
heads (K/V may have fewer: query head h reads key/value head h // (H / Hkv)),
M additive and broadcastable to [..., Sq, Skv].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..constants import _evaluate
from ..context import Context
from ..engine import CAUSAL_ATTENTION, UNMASKED_ATTENTION
from ..match import const_shape, const_value, consumers, is_op, producer
from ..rule import Match, NodeSpec, quake
from ..symbolic import Sizes
from ..types import Dim

FAMILY = "attention"
# A masked score: -inf, float-lowest (Hugging Face's finfo.min), float16's -65504, BERT's -10000.
# Below this a key's weight e^(s - max) is 0 in float32 for any score an attention computes.
MASKED = -1e4
MAX_MASK_ELEMENTS = 1 << 24  # a constant mask evaluated for the causal proof (GPT-2's bias is 1024 x 1024)
COST = "the fused attention"


def same_dim(a: Dim, b: Dim) -> bool:
    """Equal and known: the same int, or the same symbolic name."""
    return a is not None and a == b


def dim_from_end(shape: list[Dim], axis: int) -> Dim:
    """Dimension `axis` counted from the end (1 = last); 1 where the shape is shorter (numpy broadcasting)."""
    return shape[-axis] if axis <= len(shape) else 1


# Ops that keep their first input's shape: followed back when a dimension is traced.
_SHAPE_KEEPING = frozenset({"Cast", "Identity", "Mul", "Div", "Add", "Sub", "Neg", "Sqrt", "CastLike"})


def traced_dim(ctx: Context, tensor: gs.Tensor, axis_from_end: int, depth: int = 8) -> Dim:
    """Dimension `axis_from_end` of `tensor` (1 = last): the inferred one when
    it is a number, else read off the graph that made the tensor. Exports
    split heads with Reshape(x, Concat(batch, seq, H, D)) whose batch and seq
    come from Shape at run time, so onnx's inference names every head count
    anew (unk__18, unk__19) although H is a constant; following Transposes
    and elementwise steps back to that Reshape's constant finds it."""
    shape = ctx.shape(tensor)
    dim = dim_from_end(shape, axis_from_end) if shape is not None else None
    if isinstance(dim, int) and dim > 0:
        return dim
    node = producer(tensor)
    if node is None or depth == 0 or shape is None:
        return dim
    rank = len(shape)
    axis = rank - axis_from_end
    if is_op(node, "Transpose"):
        perm = node.attrs.get("perm")
        if perm is None or len(perm) != rank or not 0 <= axis < rank:
            return dim
        source = perm[axis]
        in_shape = ctx.shape(node.inputs[0])
        if in_shape is None or len(in_shape) != rank:
            return dim
        found = traced_dim(ctx, node.inputs[0], rank - source, depth - 1)
        return found if isinstance(found, int) else dim
    if is_op(node, "Reshape") and len(node.inputs) == 2:
        value = _reshape_target(node.inputs[1])
        if value is None or len(value) != rank or not 0 <= axis < rank:
            return dim
        if value[axis] > 0:
            return int(value[axis])
        if value[axis] == -1:
            inferred = _inferred_entry(value, ctx.shape(node.inputs[0]))
            return inferred if inferred is not None else dim
        return dim
    if node.op in _SHAPE_KEEPING and (node.domain or "") in ("", "ai.onnx") and node.inputs:
        found = traced_dim(ctx, node.inputs[0], axis_from_end, depth - 1)
        return found if isinstance(found, int) else dim
    return dim


def _inferred_entry(target: list[int], data_shape: Optional[list[Dim]]) -> Optional[int]:
    """The -1 of a Reshape target such as [B, S, -1, 32] applied to [B, S, 384]:
    the entries read at run time (-2) are taken to be the data's leading
    dimensions they stand for (exports take them from Shape of the same
    activations), so -1 is the product of the data's other dimensions over
    the target's constants (384 / 32 = 12 heads). None when that does not
    come out a whole number or the data's other dimensions are not static."""
    lead = 0
    while lead < len(target) and target[lead] == -2:
        lead += 1
    if data_shape is None or lead > len(data_shape) or target.count(-1) != 1 or -2 in target[lead:]:
        return None
    rest = data_shape[lead:]
    if any(not isinstance(d, int) or d <= 0 for d in rest):
        return None
    known = [t for t in target[lead:] if t > 0]
    numerator, denominator = math.prod(rest), math.prod(known)
    if denominator <= 0 or numerator % denominator:
        return None
    return numerator // denominator


def _reshape_target(shape: gs.Tensor) -> Optional[list[int]]:
    """A Reshape's target with every constant entry as its value and the
    others as -2 (unknown): a stored constant, or a Concat of one-element
    pieces (Unsqueeze of a scalar read at run time, constants)."""
    value = const_value(shape)
    if value is not None:
        return [int(v) for v in np.asarray(value).reshape(-1)]
    node = producer(shape)
    if not is_op(node, "Concat"):
        return None
    out: list[int] = []
    for piece in node.inputs:
        v = const_value(piece)
        if v is not None:
            out.extend(int(x) for x in np.asarray(v).reshape(-1))
            continue
        piece_shape = const_shape(piece)
        if piece_shape is None:
            maker = producer(piece)
            one = is_op(maker, "Unsqueeze") or is_op(maker, "Reshape")
            if not one:
                return None
        out.append(-2)  # read at run time: a size, not a head count we need
    return out


def heads(ctx: Context, t: gs.Tensor) -> Dim:
    """The head count of Q, K or V (axis -3): the inferred one when it is a
    number; else read off the Reshape that split the heads (traced_dim); else,
    where onnx's inference left a fresh name and the Reshape's entry is not a
    constant, derived from the model's input sizes (..symbolic: sound, through
    Shape / Gather / Concat computations). The inferred name when none tells."""
    h = traced_dim(ctx, t, 3)
    shape = ctx.shape(t)
    if isinstance(h, int) or shape is None or len(shape) < 3:
        return h
    derived = Sizes(ctx).dim(t, -3)
    return derived.const if derived is not None and derived.is_const else h


# ---------------------------------------------------------------------------
# Scales.


def scalar_factor(ctx: Context, node: Optional[gs.Node], t: gs.Tensor) -> Optional[float]:
    """The factor of t = x * c or x / c (c a constant scalar that does not raise x's rank),
    as a multiplier; None when `node` (t's producer) is not such a scaling."""
    if is_op(node, "Mul"):
        found = ctx.scalar_operand(node)
        return None if found is None else found[0]
    if is_op(node, "Div"):
        divisor = ctx.scalar_divisor(node)
        return None if divisor is None or divisor == 0 else 1.0 / divisor
    return None


def unscaled(ctx: Context, t: gs.Tensor) -> tuple[gs.Tensor, float, list[gs.Node]]:
    """Strips x * c and x / c (c a constant scalar) off t: (x, the product of the factors, the scaling nodes)."""
    factor, nodes = 1.0, []
    while True:
        node = producer(t)
        c = scalar_factor(ctx, node, t)
        if c is None:
            return t, factor, nodes
        factor *= c
        nodes.append(node)
        t = ctx.scalar_operand(node)[1] if is_op(node, "Mul") else node.inputs[0]


# ---------------------------------------------------------------------------
# K's transpose and the repeat of K/V heads.


def swaps_last_two(node: gs.Node) -> bool:
    """A Transpose exchanging the last two axes and nothing else."""
    perm = node.attrs.get("perm")
    if perm is None:
        return False
    perm = [int(p) for p in perm]
    n = len(perm)
    return n >= 2 and perm == list(range(n - 2)) + [n - 1, n - 2]


@dataclass
class Operand:
    """Q, K or V as the fused op reads it: the tensor, the nodes stripped off it
    (pruned when nothing else reads them), and what they did."""

    tensor: gs.Tensor
    nodes: list[gs.Node] = field(default_factory=list)
    factor: float = 1.0
    transposed: bool = False  # K: swapped back to [..., Skv, D] by a stripped Transpose
    repeat: int = 1  # K/V: heads repeated this many times by a stripped Unsqueeze/Expand/Reshape


def _axes(node: gs.Node) -> Optional[list[int]]:
    """Unsqueeze's axes (attribute before opset 13, input after)."""
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1:
        value = const_value(node.inputs[1])
        return None if value is None else [int(a) for a in np.asarray(value).reshape(-1)]
    return None


def repeated_heads(ctx: Context, t: gs.Tensor) -> Union[None, str, tuple[gs.Tensor, int, list[gs.Node]]]:
    """The K/V of grouped-query attention before the exporter repeated its heads:
    Reshape(Expand|Tile(Unsqueeze(x, axis=heads+1))) of x [..., Hkv, S, D] to
    [..., Hkv * n, S, D] (Hugging Face's repeat_kv), each key/value head then
    serving n consecutive query heads, as com.quake Attention groups them. Returns
    (x, n, nodes), a reason when the repeat is there in another order, None when
    t is not repeated this way."""
    reshape = producer(t)
    if not is_op(reshape, "Reshape"):
        return None
    spread = producer(reshape.inputs[0])
    if not (is_op(spread, "Expand") or is_op(spread, "Tile")):
        return None
    unsqueeze = producer(spread.inputs[0])
    if not is_op(unsqueeze, "Unsqueeze"):
        return None
    x = unsqueeze.inputs[0]
    shape, out, spread_shape = ctx.shape(x), ctx.shape(t), ctx.shape(spread.outputs[0])
    axes = _axes(unsqueeze)
    if shape is None or out is None or axes is None or len(axes) != 1 or len(shape) < 3 or len(out) != len(shape):
        return "cannot tell how the K/V heads are repeated (shapes unknown)"
    rank = len(shape)
    if axes[0] % (rank + 1) != rank - 2:
        # Repeating with the new axis before the heads interleaves them (h % Hkv), not the grouping of the op.
        return "K/V heads are repeated in an order com.quake Attention's grouping does not follow"
    if is_op(spread, "Tile"):
        reps = const_value(spread.inputs[1])
        if reps is None or [int(r) for i, r in enumerate(np.asarray(reps).reshape(-1)) if i != rank - 2] != [1] * rank:
            return "K/V heads are tiled along other axes than the repeat"
    # Inferred, else traced or derived from the model's inputs (heads): exporters compute
    # them from Shape nodes and a -1 (Hugging Face's view(*input_shape, -1, head_dim)).
    h_kv, h = heads(ctx, x), heads(ctx, t)
    if not (isinstance(h_kv, int) and isinstance(h, int) and h_kv > 0 and h % h_kv == 0):
        return "cannot tell how the K/V heads are repeated (head counts not static)"
    sizes = None

    def same(a_t: gs.Tensor, a: int, b_t: gs.Tensor, b: int) -> bool:
        """Dimension a of a_t equals dimension b of b_t: the same name or number, or, where
        shape inference lost the names (the exporter computes the Expand and Reshape targets
        from Shape nodes), the same size derived from the model's inputs."""
        nonlocal sizes
        da, db = ctx.shape(a_t)[a], ctx.shape(b_t)[b]
        if same_dim(da, db):
            return True
        sizes = sizes or Sizes(ctx)
        ea, eb = sizes.dim(a_t, a), sizes.dim(b_t, b)
        return ea is not None and ea == eb

    if spread_shape is not None and len(spread_shape) == rank + 1:
        # The repeat axis right after the heads, every other axis of x kept as it is.
        others = [i for i in range(rank + 1) if i != rank - 2]
        if not all(same(spread.outputs[0], i, x, j) for i, j in zip(others[-3:], range(rank - 3, rank))):
            return "the K/V repeat changes more than the head count"
    if not all(same(t, i, x, i) for i in (-2, -1)):
        return "the K/V repeat changes more than the head count"
    return x, h // h_kv, [reshape, spread, unsqueeze]


def operand_kv(ctx: Context, t: gs.Tensor, is_key: bool) -> Union[str, Operand]:
    """K (is_key: also its scales and last-two-axes transposes) or V, with the
    exporter's repeat of heads stripped off."""
    op = Operand(t)
    while True:
        node = producer(op.tensor)
        c = scalar_factor(ctx, node, op.tensor) if is_key else None
        if c is not None:
            op.factor *= c
            op.nodes.append(node)
            op.tensor = ctx.scalar_operand(node)[1] if is_op(node, "Mul") else node.inputs[0]
            continue
        if is_key and is_op(node, "Transpose") and swaps_last_two(node):
            op.transposed = not op.transposed
            op.nodes.append(node)
            op.tensor = node.inputs[0]
            continue
        if op.repeat == 1:
            found = repeated_heads(ctx, op.tensor)
            if isinstance(found, str):
                return found
            if found is not None:
                op.tensor, op.repeat, nodes = found
                op.nodes.extend(nodes)
                continue
        return op


def exclusive_upstream(tensors: list[gs.Tensor], members: list[gs.Node], depth: int = 12) -> list[gs.Node]:
    """Producers (to `depth` steps back) whose every output is read only by `members` or
    by each other: what computes the pattern's shape inputs (Shape -> Gather -> Concat),
    dead once the pattern goes."""
    inside = {id(n) for n in members}
    found: list[gs.Node] = []
    frontier = list(tensors)
    for _ in range(depth):
        nxt = []
        for t in frontier:
            node = producer(t)
            if node is None or id(node) in inside:
                continue
            if all(all(id(r) in inside for r in consumers(o)) for o in node.outputs):
                inside.add(id(node))
                found.append(node)
                nxt.extend(node.inputs)
        frontier = nxt
    return found


# ---------------------------------------------------------------------------
# Masks.


@dataclass
class Mask:
    """One masking step of the scores: an additive term, or a Where keeping the
    scores where `live` says and putting `fill` elsewhere."""

    tensor: gs.Tensor  # the additive term, or the Where's condition
    node: gs.Node  # the Add / Sub / Where
    where: bool = False
    live_if: bool = True  # Where: the condition value that keeps the score
    fill: float = 0.0  # Where: the value of a masked score
    negate: bool = False  # Sub: scores - m
    elem: Optional[int] = None  # element type of the masked scores (the replacement runs after the node is gone)


def static_value(t: gs.Tensor, depth: int = 6) -> Optional[np.ndarray]:
    """The value of a constant mask, through the ops exporters put between the
    stored mask and its use (Cast, Slice with constant bounds, Not, Unsqueeze,
    Reshape, Identity); None when it is computed at run time or too big."""
    node = producer(t)
    if isinstance(t, gs.Constant) or is_op(node, "Constant"):
        shape = const_shape(t)
        if shape is None or int(np.prod(shape)) > MAX_MASK_ELEMENTS:
            return None
        value = const_value(t)
        return None if value is None else np.asarray(value)
    if node is None or depth == 0 or len(node.outputs) != 1:
        return None
    x = static_value(node.inputs[0], depth - 1) if node.inputs else None
    if x is None:
        return None

    def ints(i: int) -> Optional[list[int]]:
        if len(node.inputs) <= i or not node.inputs[i].name:
            return None
        v = _evaluate(node.inputs[i], 4, [], scalar=False)
        return None if v is None or v.dtype.kind != "i" else [int(a) for a in v.reshape(-1)]

    try:
        if is_op(node, "Identity"):
            return x
        if is_op(node, "Not"):
            return np.logical_not(x)
        if is_op(node, "Cast"):
            return x.astype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))
        if is_op(node, "Unsqueeze"):
            axes = _axes(node)
            return None if axes is None else np.expand_dims(x, tuple(axes))
        if is_op(node, "Reshape"):
            shape = ints(1)
            return None if shape is None else x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(shape)])
        if is_op(node, "Slice"):
            starts, ends = ints(1), ints(2)
            if starts is None or ends is None:
                return None
            axes = ints(3) or list(range(len(starts)))
            steps = ints(4) or [1] * len(starts)
            index = [slice(None)] * x.ndim
            for a, s, e, st in zip(axes, starts, ends, steps):
                index[a] = slice(s, e, st)
            return x[tuple(index)]
    except (ValueError, IndexError, KeyError, TypeError):
        return None
    return None


def causal_triangle(sq: int, skv: int) -> np.ndarray:
    """True where query i may see key j under com.quake Attention's causal=1: j <= i + (Skv - Sq)."""
    return np.arange(skv)[None, :] <= np.arange(sq)[:, None] + (skv - sq)


def live_keys(mask: Mask) -> Optional[np.ndarray]:
    """Where the mask keeps the score (a bool array), when it is a constant that
    only keeps or masks (additive: 0 or <= MASKED); None otherwise."""
    value = static_value(mask.tensor)
    if value is None or value.ndim < 1:
        return None
    if mask.where:
        return value.astype(bool) == mask.live_if
    value = -value.astype(np.float64) if mask.negate else value.astype(np.float64)
    if not np.all((value == 0) | (value <= MASKED)):
        return None
    return value == 0


def masked_pattern(live: np.ndarray, sq: Dim, skv: Dim) -> Optional[str]:
    """'none' when every key is live, 'causal' when the live keys are exactly the
    causal triangle over Sq <= Skv (with the past: Sq < Skv), None otherwise
    (or when unknown).
    Every leading slice of the mask must be the same [Sq, Skv] pattern."""
    if live.ndim < 2:
        live = live.reshape((1,) * (2 - live.ndim) + live.shape)
    rows = live.reshape((-1,) + live.shape[-2:])
    if not np.all(rows == rows[0]):
        return None
    plane = rows[0]
    if plane.all():
        return "none"
    if not (isinstance(sq, int) and isinstance(skv, int)) or sq > skv:
        # Sq > Skv: the first Sq - Skv rows see no key, which causal=1 gives 0
        # and a finite fill (float-lowest, -1e4) the mean of V or the softmax of
        # the raw scores: kept as M, the op gives what the original gives.
        return None
    try:
        plane = np.broadcast_to(plane, (sq, skv))
    except ValueError:
        return None
    return "causal" if np.array_equal(plane, causal_triangle(sq, skv)) else None


def _may_fit(m: Dim, s: Dim) -> bool:
    """Whether a mask dim m may be 1 or the scores' dim s. Symbolic or unknown
    dims are given the benefit of the doubt: shape inference often loses the
    sequence length's name through an exporter's Reshape, and where such a dim
    turns out not to fit, com.quake Attention refuses the run with an error
    naming the shapes (it never computes with a wrong mask)."""
    if m == 1 or same_dim(m, s):
        return True
    if isinstance(m, int) and isinstance(s, int):
        return False
    return s != 1  # a mask of length > 1 on an axis of 1 would make the scores bigger


def broadcast_reason(mask_shape: Optional[list[Dim]], scores: list[Dim], q_heads: Dim) -> Optional[str]:
    """None when a mask of `mask_shape` adds to scores [..., Sq, Skv] without
    making them bigger, as com.quake Attention's M must (its head axis 1 or Q's
    heads); else the reason."""
    if mask_shape is None:
        return "the mask's shape is unknown"
    if len(mask_shape) > len(scores):
        return f"the mask (rank {len(mask_shape)}) has more axes than the scores (rank {len(scores)})"
    for axis in range(1, len(mask_shape) + 1):
        if not _may_fit(dim_from_end(mask_shape, axis), dim_from_end(scores, axis)):
            return (
                f"the mask {_shape_text(mask_shape)} is not additive-broadcastable to the scores "
                f"{_shape_text(scores)} (axis {-axis})"
            )
    if len(mask_shape) >= 3 and not _may_fit(mask_shape[-3], q_heads):
        return f"the mask's head axis ({mask_shape[-3]}) is neither 1 nor Q's head count ({q_heads})"
    return None


def _shape_text(shape: list[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


# ---------------------------------------------------------------------------
# The replacement.


@dataclass
class Plan:
    """Everything the com.quake Attention node needs, decided by a rule's checks."""

    q: gs.Tensor
    k: gs.Tensor
    v: gs.Tensor
    output: gs.Tensor
    scale: float
    causal: bool
    k_transposed: bool
    elem: int  # Q's element type: M is cast to it when a mask is of another
    masks: list[Mask] = field(default_factory=list)  # additive terms and Where masks to turn into one M
    sq: Dim = None  # query rows, for the break-even of a symbolic size (symbolic_size_reason)
    skv: Dim = None  # key rows: the causal floor applies where Sq = Skv (floor_key)
    cached: bool = False  # K and V read from a KV cache's Concat(past, new) (symbolic_size_reason)
    # No Add, Sub or Where on the scores at all: the per-op rewrite has no mask pass
    # over them for the fused op to save, so the block has its own break-even.
    unmasked: bool = False


def mask_specs(ctx: Context, plan: Plan, base: str) -> tuple[list[NodeSpec], Optional[gs.Tensor]]:
    """The nodes computing the one additive M from the plan's masks, applied
    in the graph's order (the walk lists them from the Softmax back, so the
    last is applied first): an Add's term is added, a Sub's subtracted, and a
    Where(cond, scores, fill) becomes Where(cond, M so far, lowest). M is cast
    to Q's element type when it is another (a mask applied after the
    Softmax's upcast to float).

    A Where puts its fill in place of the scores, M adds to them: for a row
    whose every key is masked the Where's row is uniform (the mean of V), the
    sum a softmax of the scores. So a masked position takes the lowest value
    of M's type, which swamps any score as the Where's fill did (float's
    lowest: s + lowest rounds to lowest; float16's -65504 the op reads as
    float's lowest, docs/ops.md), and replaces what the masks before it
    added (lowest + finfo.min would be -inf); rows where a key is live are the
    same either way while their max exceeds the fill + 104 (e^(fill - max)
    rounds to 0; docs/optimize.md says what differs below). A -inf fill
    stays -inf."""
    specs: list[NodeSpec] = []
    m: Optional[gs.Tensor] = None
    m_elem: Optional[int] = None
    for mask in reversed(plan.masks):  # innermost first
        elem = mask.elem or plan.elem
        if m is not None and m_elem != elem:
            m = _cast(ctx, specs, m, m_elem, elem, base)
        m_elem = elem
        out = ctx.variable(f"{base}/quake_mask")
        if mask.where:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
            value = mask.fill if np.isneginf(mask.fill) else np.finfo(dtype).min
            kept = m if m is not None else gs.Constant(ctx.names.tensor(f"{base}/quake_mask_zero"), np.zeros((), dtype))
            fill = gs.Constant(ctx.names.tensor(f"{base}/quake_mask_fill"), np.asarray(value, dtype))
            pair = [kept, fill] if mask.live_if else [fill, kept]
            specs.append(NodeSpec("Where", [mask.tensor, *pair], [out], domain=""))
        elif m is None:
            if not mask.negate:
                m = mask.tensor
                continue
            specs.append(NodeSpec("Neg", [mask.tensor], [out], domain=""))
        else:
            specs.append(NodeSpec("Sub" if mask.negate else "Add", [m, mask.tensor], [out], domain=""))
        m = out
    if m is not None and m_elem != plan.elem:
        m = _cast(ctx, specs, m, m_elem, plan.elem, base)
    return specs, m


def _cast(ctx: Context, specs: list[NodeSpec], m: gs.Tensor, elem: int, to: int, base: str) -> gs.Tensor:
    """M cast from `elem` to `to`; to float16 clipped to its range first."""
    if to == onnx.TensorProto.FLOAT16:
        m = _saturated_for_half(ctx, specs, m, elem, base)
    cast = ctx.variable(f"{base}/quake_mask")
    specs.append(NodeSpec("Cast", [m], [cast], {"to": to}, domain=""))
    return cast


def _saturated_for_half(ctx: Context, specs: list[NodeSpec], m: gs.Tensor, elem: int, base: str) -> gs.Tensor:
    """M clipped to float16's range, -inf kept: a float mask's finfo.min or
    -1e9 would cast to -inf, and a row masked by it everywhere would give 0
    where the float graph gave the mean of V; as -65504 the op reads it as
    float's lowest (mask_specs). Max and Min, not Clip (whose bounds are
    inputs only from opset 11); -inf is told by Less(m, lowest) and kept by a
    Where from opset 9 (before it, -inf becomes -65504 too)."""
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
    limit = float(np.finfo(np.float16).max)
    lo = gs.Constant(ctx.names.tensor(f"{base}/quake_mask_half_lowest"), np.asarray(-limit, dtype))
    hi = gs.Constant(ctx.names.tensor(f"{base}/quake_mask_half_max"), np.asarray(limit, dtype))
    capped, clipped = ctx.variable(f"{base}/quake_mask"), ctx.variable(f"{base}/quake_mask")
    specs.append(NodeSpec("Min", [m, hi], [capped], domain=""))
    specs.append(NodeSpec("Max", [capped, lo], [clipped], domain=""))
    if ctx.opset < 9:
        return clipped
    lowest = gs.Constant(ctx.names.tensor(f"{base}/quake_mask_lowest"), np.asarray(np.finfo(dtype).min, dtype))
    minus_inf, kept = ctx.variable(f"{base}/quake_mask"), ctx.variable(f"{base}/quake_mask")
    specs.append(NodeSpec("Less", [m, lowest], [minus_inf], domain=""))
    specs.append(NodeSpec("Where", [minus_inf, m, clipped], [kept], domain=""))
    return kept


def attention_match(plan: Plan, remove: list[gs.Node], prune: list[gs.Node], size) -> Match:
    """The Match replacing `remove` by one com.quake Attention (after the mask nodes it needs)."""
    scale = float(np.float32(plan.scale))
    key = floor_key(plan.causal and same_dim(plan.sq, plan.skv), not plan.unmasked)

    def build(ctx: Context) -> list[NodeSpec]:
        specs, m = mask_specs(ctx, plan, plan.output.name)
        inputs = [plan.q, plan.k, plan.v] + ([m] if m is not None else [])
        specs.append(
            quake(
                "Attention",
                inputs,
                [plan.output],
                ctx,
                scale=scale,
                causal=int(plan.causal),
                k_transposed=int(plan.k_transposed),
            )
        )
        return specs

    extras = [f"scale={scale:.6g}"]
    if plan.causal:
        extras.append("causal")
    if plan.k_transposed:
        extras.append("k_transposed")
    if plan.masks:
        extras.append("mask")
    return Match(
        x=plan.q,
        remove=remove,
        output=plan.output,
        build=build,
        summary=f"com.quake Attention ({', '.join(extras)})",
        prune=prune,
        size=size,
        size_what="score elements",
        cost=COST + _COST_SUFFIX[key],
        unknown_size_reason=symbolic_size_reason(plan),
        floor_key=key,
    )


def floor_key(causal: bool, masked: bool) -> Optional[str]:
    """The block's BREAK_EVEN key (rule.Match.floor_key): causal, without a mask, or the family's.
    `causal`: the triangle over Sq = Skv that the causal floor was measured on (a short query
    block against a longer past skips few tiles and is held to the masked floor)."""
    return CAUSAL_ATTENTION if causal else None if masked else UNMASKED_ATTENTION


# Whose break-even a block is held to, by its floor key, as --explain names it.
_COST_SUFFIX = {CAUSAL_ATTENTION: " (causal)", UNMASKED_ATTENTION: " without a mask", None: ""}


# A query block this short is a decode step (or a few): the fused op reads
# K and V once per group of heads and splits the keys over the threads,
# 1.8x the unfused block at any cache length (BENCHMARKS.md, "Zen 4: attention").
DECODE_ROWS = 16


def symbolic_size_reason(
    plan: Optional["Plan"] = None, sq: Dim = None, causal: bool = False, cached: bool = False
) -> Optional[str]:
    """Why a block whose score count is symbolic is left to the per-op rewrite,
    or None to fuse it. Below the break-even (engine.BREAK_EVEN) the fused non-causal
    op is slower than the per-op rewrite (0.93x at S128), and an encoder
    exported with a symbolic sequence length runs at whatever length it is
    given. Fused at any size: a block whose mask is causal for every size
    (causal=1 skips the masked tiles, half the work: 2.1x the unfused block at
    H12 S2048), one that reads a KV cache (K/V = Concat(past, new): a decoder's
    decode graph, 1.8x at any cache length) and a short static query block (a
    decode step)."""
    if plan is not None:
        sq, causal, cached = plan.sq, plan.causal, plan.cached
    if causal or cached:
        return None
    if isinstance(sq, int) and 0 < sq <= DECODE_ROWS:
        return None
    return (
        "the score size is symbolic and the block is neither causal nor reading a KV cache: below the "
        "break-even the fused attention is slower than the per-op rewrite (--min-elements 0 fuses it)"
    )


def reads_cache(ctx: Context, k: gs.Tensor, v: gs.Tensor, k_transposed: bool) -> bool:
    """Whether K and V are each a Concat of two or more tensors along the keys'
    axis (Concat(past, new): a KV cache; after the GQA repeat is taken away)."""
    return _concat_on(ctx, k, 1 if k_transposed else 2) and _concat_on(ctx, v, 2)


def _concat_on(ctx: Context, t: gs.Tensor, axis_from_end: int) -> bool:
    node = producer(t)
    while is_op(node, "Identity"):
        t = node.inputs[0]
        node = producer(t)
    shape = ctx.shape(t)
    if not is_op(node, "Concat") or shape is None or len(shape) < axis_from_end:
        return False
    pieces = [i for i in node.inputs if i.name]
    return len(pieces) >= 2 and int(node.attrs.get("axis", 0)) % len(shape) == len(shape) - axis_from_end


def finite_scale(scale: float) -> Optional[str]:
    if not math.isfinite(scale) or not math.isfinite(float(np.float32(scale))):
        return f"scale {scale:g} is not a finite float"
    return None


# ---------------------------------------------------------------------------
# Attention ops with the heads packed into the last axis ([B, S, N * H]):
# com.microsoft.MultiHeadAttention, ONNX Attention with 3-D inputs.


def extra_outputs_used(ctx: Context, node: gs.Node) -> Optional[str]:
    """The name of an output after the first that something reads, or None."""
    for out in node.outputs[1:]:
        if out.name and (out.outputs or ctx.scopes.is_output(out)):
            return out.name
    return None


def optional_input(node: gs.Node, i: int) -> Optional[gs.Tensor]:
    return node.inputs[i] if len(node.inputs) > i and node.inputs[i].name else None


def split_heads(ctx: Context, t: gs.Tensor, heads: int, base: str, specs: list[NodeSpec]) -> gs.Tensor:
    """[B, S, N * H] -> [B, N, S, H] (Reshape, Transpose), appended to specs."""
    shape = gs.Constant(ctx.names.tensor(f"{base}/quake_heads_shape"), np.array([0, 0, heads, -1], np.int64))
    split = ctx.variable(f"{base}/quake_heads")
    specs.append(NodeSpec("Reshape", [t, shape], [split], domain=""))
    out = ctx.variable(f"{base}/quake_heads_first")
    specs.append(NodeSpec("Transpose", [split], [out], {"perm": [0, 2, 1, 3]}, domain=""))
    return out


def merge_heads(ctx: Context, y: gs.Tensor, out: gs.Tensor, base: str, specs: list[NodeSpec]) -> None:
    """[B, N, S, Hv] -> out [B, S, N * Hv] (Transpose, Reshape), appended to specs."""
    moved = ctx.variable(f"{base}/quake_heads_last")
    specs.append(NodeSpec("Transpose", [y], [moved], {"perm": [0, 2, 1, 3]}, domain=""))
    shape = gs.Constant(ctx.names.tensor(f"{base}/quake_merged_shape"), np.array([0, 0, -1], np.int64))
    specs.append(NodeSpec("Reshape", [moved, shape], [out], domain=""))


def head_size(shape: Optional[list[Dim]], heads: int, what: str) -> Union[int, str]:
    """The per-head size of a [B, S, N * H] input with N = heads, or a reason."""
    if shape is None or not isinstance(shape[-1], int):
        return f"{what}'s hidden size is not static"
    if heads <= 0 or shape[-1] % heads:
        return f"{what}'s hidden size {shape[-1]} is not a multiple of {heads} heads"
    return shape[-1] // heads


def scores_size(ctx: Context, batch: Dim, heads: int, sq: Dim, skv: Dim):
    """The break-even's measure of an attention op: B * N * Sq * Skv, None when symbolic."""
    dims = [batch, heads, sq, skv]
    return (lambda _: int(np.prod(dims))) if all(isinstance(d, int) for d in dims) else (lambda _: None)


def fused_match(
    node: gs.Node, x: gs.Tensor, build, summary: str, size, sq: Dim = None, causal: bool = False, masked: bool = True
) -> Match:
    """The Match replacing an attention op by the nodes `build` makes."""
    key = floor_key(causal, masked)
    return Match(
        x=x,
        remove=[node],
        output=node.outputs[0],
        build=build,
        summary=summary,
        size=size,
        size_what="score elements",
        cost=COST + _COST_SUFFIX[key],
        unknown_size_reason=symbolic_size_reason(sq=sq, causal=causal),
        floor_key=key,
    )
