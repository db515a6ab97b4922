"""Causal masks a decoder builds at run time, proved causal from the sizes.

Hugging Face's eager attention (transformers' `eager_mask`), exported with
dynamic sequence lengths, computes its mask in the graph:

    q  = Range(0, Sq) + past          (the query positions, [1, 1, Sq, 1] after Unsqueezes)
    kv = Range(0, past + Sq)          (the key positions,   [1, 1, 1, Skv])
    live = LessOrEqual(kv, q)         (key j is seen by query i when j <= i + past)
    M = Where(Expand(live, [B, 1, Sq, Skv]), 0, float-lowest)

and adds M to the scores. The mask is exactly com.quake Attention's causal=1
(key j live when j <= i + Skv - Sq) when the offset equals Skv - Sq and the
mask's rows and columns are the scores': both are shown here with the
symbolic sizes of `..symbolic` (Sq, Skv of the scores derived from the
model's inputs, e.g. `seq` and `past + seq`), never assumed. Anything else
(a padding mask And-ed in, a sliding window, an offset that is not
Skv - Sq, a size that cannot be derived) is no proof, and the mask stays the
op's additive M, as before.

Forms: the comparison as LessOrEqual / Less / GreaterOrEqual / Greater,
either operand order; positions from Range with step 1, shifted by Add / Sub
of a scalar, through integer Casts and Unsqueezes; the condition through
Not, Expand, Identity; the term as Where(cond, 0, fill) or
Where(cond, fill, 0) with fill <= -1e4 (through float Casts and Expand),
subtracted (Sub) with the signs flipped, or the condition of a Where mask
(Where(cond, scores, fill)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..constants import scalar
from ..context import Context
from ..match import is_op, producer
from ..symbolic import ONE, Expr, Sizes, axes_of, is_int_cast
from .attention_parts import MASKED, Mask

MAX_STEPS = 16

_COMPARE = {  # op -> (operand that is smaller, strict)
    "LessOrEqual": (0, False),
    "Less": (0, True),
    "GreaterOrEqual": (1, False),
    "Greater": (1, True),
}


@dataclass(frozen=True)
class Index:
    """An integer tensor of rank `rank`, all axes 1 but `axis`, whose element p along it is p + offset."""

    rank: int
    axis: int
    length: Expr
    offset: Expr


@dataclass
class Pattern:
    """live(i, j) <=> j <= i + d, for query i < q_len (axis -2) and key j < kv_len (axis -1)
    of a mask of rank `rank` whose leading axes are `lead` (ONE where not broadcast)."""

    rank: int
    q_len: Expr
    kv_len: Expr
    d: Expr
    lead: list[Optional[Expr]] = field(default_factory=list)


def _index(sizes: Sizes, t: gs.Tensor, steps: int = MAX_STEPS) -> Optional[Index]:
    node = producer(t)
    if node is None or steps == 0:
        return None
    if is_op(node, "Range") and len(node.inputs) == 3:
        start, limit, delta = (sizes.scalar(i) for i in node.inputs)
        if start is None or limit is None or delta != ONE:
            return None
        length = limit - start
        return Index(1, 0, length, start) if length.nonnegative() else None
    if is_op(node, "Identity") or is_int_cast(node):
        return _index(sizes, node.inputs[0], steps - 1)
    if (is_op(node, "Add") or is_op(node, "Sub")) and len(node.inputs) == 2:
        orders = [(0, 1), (1, 0)] if is_op(node, "Add") else [(0, 1)]
        for a, b in orders:
            idx = _index(sizes, node.inputs[a], steps - 1)
            shift = sizes.scalar(node.inputs[b])
            rank = sizes.rank(node.inputs[b])
            if idx is None or shift is None or rank is None or rank > idx.rank:
                continue
            return _shifted(idx, node.op, shift)
        return None
    if is_op(node, "Unsqueeze"):
        idx = _index(sizes, node.inputs[0], steps - 1)
        axes = axes_of(node)
        if idx is None or axes is None:
            return None
        rank = idx.rank + len(axes)
        axes = sorted(a % rank for a in axes)
        kept = [a for a in range(rank) if a not in axes]  # output axes holding the input's, in order
        return Index(rank, kept[idx.axis], idx.length, idx.offset)
    return None


def _shifted(idx: Index, op: str, shift: Expr) -> Index:
    return Index(idx.rank, idx.axis, idx.length, idx.offset + shift if op == "Add" else idx.offset - shift)


_COMPLEMENT = {"LessOrEqual": "Greater", "Less": "GreaterOrEqual", "GreaterOrEqual": "Less", "Greater": "LessOrEqual"}


def _relation(sizes: Sizes, node: gs.Node, live_if: bool) -> Optional[Pattern]:
    """key <= query + d from a comparison of the key positions (last axis) with the query
    positions, live where it is `live_if` (False: the complement, Not(kv > q) is kv <= q)."""
    smaller, strict = _COMPARE[node.op if live_if else _COMPLEMENT[node.op]]
    lo, hi = (_index(sizes, node.inputs[i]) for i in (smaller, 1 - smaller))
    if lo is None or hi is None:
        return None
    rank = max(lo.rank, hi.rank)
    # Axes counted from the end (broadcasting aligns them there): keys on the last, queries before.
    if lo.axis - lo.rank != -1 or hi.axis - hi.rank != -2:
        return None
    # j + lo.offset <= i + hi.offset (< when strict)
    d = hi.offset - lo.offset - (ONE if strict else Expr())
    return Pattern(rank, hi.length, lo.length, d, [ONE] * (rank - 2))


def _expanded(sizes: Sizes, p: Pattern, shape: gs.Tensor) -> Optional[Pattern]:
    """The pattern broadcast by Expand(_, shape): its rows and columns must stay, other axes may grow."""
    target = sizes.value(shape)
    if target is None or target.rank != 1:
        return None
    items = list(target.items)
    rank = max(p.rank, len(items))
    items = [ONE] * (rank - len(items)) + items
    lead = [ONE] * (rank - p.rank) + p.lead
    for axis, size in ((-2, p.q_len), (-1, p.kv_len)):
        item = items[axis]
        if not (isinstance(item, Expr) and (item == ONE or item == size)):
            return None
    new_lead = []
    for have, item in zip(lead, items[:-2]):
        if not isinstance(item, Expr) or have is None:
            new_lead.append(None)
        elif have == ONE:
            new_lead.append(item)
        elif item in (ONE, have):
            new_lead.append(have)
        else:
            new_lead.append(None)
    return Pattern(rank, p.q_len, p.kv_len, p.d, new_lead)


def _condition(sizes: Sizes, t: gs.Tensor, live_if: bool, steps: int = MAX_STEPS) -> Optional[Pattern]:
    """The pattern of a bool tensor whose elements equal to `live_if` are the live keys."""
    node = producer(t)
    if node is None or steps == 0:
        return None
    if is_op(node, "Not"):
        return _condition(sizes, node.inputs[0], not live_if, steps - 1)
    if is_op(node, "Identity") or (is_op(node, "Cast") and _cast_to(node) == np.bool_):
        return _condition(sizes, node.inputs[0], live_if, steps - 1)
    if is_op(node, "Expand"):
        p = _condition(sizes, node.inputs[0], live_if, steps - 1)
        return None if p is None else _expanded(sizes, p, node.inputs[1])
    if node.op in _COMPARE and (node.domain or "") in ("", "ai.onnx") and len(node.inputs) == 2:
        return _relation(sizes, node, live_if)
    return None  # And / Or with a padding mask, a sliding window: no proof


def _term(sizes: Sizes, t: gs.Tensor, negate: bool, steps: int = MAX_STEPS) -> Optional[Pattern]:
    """The pattern of an additive term that is 0 on live keys and <= -1e4 on masked ones."""
    node = producer(t)
    if node is None or steps == 0:
        return None
    if is_op(node, "Identity") or (is_op(node, "Cast") and np.issubdtype(_cast_to(node), np.floating)):
        return _term(sizes, node.inputs[0], negate, steps - 1)
    if is_op(node, "Expand"):
        p = _term(sizes, node.inputs[0], negate, steps - 1)
        return None if p is None else _expanded(sizes, p, node.inputs[1])
    if is_op(node, "Where") and len(node.inputs) == 3:
        cond, x, y = node.inputs
        vx, vy = scalar(x), scalar(y)
        if vx is None or vy is None:
            return None
        if negate:
            vx, vy = -vx, -vy
        if vx == 0 and vy <= MASKED:
            return _condition(sizes, cond, True)
        if vy == 0 and vx <= MASKED:
            return _condition(sizes, cond, False)
    return None


def _cast_to(node: gs.Node):
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"]))
    except (KeyError, ValueError, TypeError):
        return None


def is_causal(ctx: Context, mask: Mask, scores: gs.Tensor) -> bool:
    """Whether `mask` (applied to `scores` [..., Sq, Skv]) keeps exactly the keys
    j <= i + Skv - Sq of every row i, for every input size the model accepts,
    with Skv >= Sq provably (Skv - Sq a sum of dimensions, a past)."""
    sizes = Sizes(ctx)
    if mask.where:
        p = _condition(sizes, mask.tensor, mask.live_if)
    else:
        p = _term(sizes, mask.tensor, mask.negate)
    if p is None:
        return False
    rank = sizes.rank(scores)
    if rank is None or p.rank > rank or rank < 2:
        return False
    sq, skv = sizes.dim(scores, -2), sizes.dim(scores, -1)
    if sq is None or skv is None or p.q_len != sq or p.kv_len != skv or p.d != skv - sq:
        return False
    # Sq > Skv would leave rows without a key, which causal=1 gives 0 and a
    # finite fill does not (attention_parts.masked_pattern): a past, never less.
    if not (skv - sq).nonnegative():
        return False
    # The mask's other axes may not make the scores bigger: each 1 or the scores' own.
    for axis, have in enumerate(p.lead):
        if have is None:
            return False
        if have != ONE and have != sizes.dim(scores, axis - p.rank):
            return False
    return True
