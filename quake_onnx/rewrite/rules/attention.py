"""softmax(scale * Q·Kᵀ [+ M] [masked by Where]) · V -> com.quake Attention.

Anchored at the Softmax; tried before the per-op Softmax rule, which takes
the node alone when this rule refuses it (with its reason). The forms the
exporters write (torch.onnx, Hugging Face eager attention):

- scale as Mul or Div on the scores, on Q (Whisper), split as sqrt(scale) on
  Q and on K (torch's SDPA decomposition), or absent (scale 1);
- Kᵀ from a Transpose swapping the last two axes (K then given as it was
  before), or K already [..., D, Skv] (k_transposed=1);
- masks: Add (or Sub) of a term broadcastable to [..., Sq, Skv], and
  Where(cond, scores, fill) with fill <= -1e4 (-inf, float-lowest); a
  constant one that is exactly the causal triangle (key j > i + Skv - Sq
  masked) becomes causal=1, one that masks nothing goes, others become the
  additive M (a Where as Where(cond, 0, fill)), several are summed; a mask
  computed at run time from the sizes (Range / LessOrEqual, transformers'
  eager mask) that is causal for every size (causal_mask.py) is causal=1 too;
- Cast around the Softmax (float16 models computing it in float32);
- K/V heads repeated by Unsqueeze -> Expand|Tile -> Reshape (GQA) taken
  with their fewer heads; a KV cache's Concat(past, new) is simply K/V.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import onnx
import onnx_graphsurgeon as gs

from ..constants import scalar
from ..context import Context
from ..engine import static_size
from ..match import consumers, is_add, is_op, producer
from ..rule import Match, Rule
from ..types import SUPPORTED
from . import attention_parts as parts
from . import causal_mask

OPSET_SINGLE_AXIS = 13
_PASS_THROUGH = ("Identity",)


def _weights_reader(ctx: Context, softmax: gs.Node) -> Optional[tuple[gs.Node, list[gs.Node]]]:
    """The MatMul computing weights · V from the Softmax's output (through a Cast
    back to V's type or an Identity): (that MatMul, the nodes in between)."""
    t, between = softmax.outputs[0], []
    for _ in range(3):
        for node in consumers(t):
            if is_op(node, "MatMul") and node.inputs[0] is t:
                return node, between
        step = next((n for n in consumers(t) if is_op(n, "Cast") or is_op(n, _PASS_THROUGH[0])), None)
        if step is None:
            return None
        between.append(step)
        t = step.outputs[0]
    return None


@dataclass
class Scores:
    """The backward walk from the Softmax's input to the Q·Kᵀ MatMul."""

    qk: gs.Node
    nodes: list[gs.Node] = field(default_factory=list)  # from the Softmax back to (not including) the MatMul
    factor: float = 1.0
    masks: list[parts.Mask] = field(default_factory=list)


def _leads_to_matmul(t: gs.Tensor, depth: int = 6) -> bool:
    """Whether t is computed from a MatMul through the ops that sit between Q·Kᵀ and the Softmax."""
    node = producer(t)
    if node is None or depth == 0:
        return False
    if is_op(node, "MatMul"):
        return True
    if node.op in ("Cast", "Identity", "Mul", "Div", "Add", "Sub", "Sum", "Where"):
        data = node.inputs[1:] if node.op == "Where" else node.inputs
        return any(_leads_to_matmul(i, depth - 1) for i in data)
    return False


def _scores(ctx: Context, t: gs.Tensor) -> Union[str, Scores]:
    """Walks back from the Softmax input to the Q·Kᵀ MatMul through scales, masks
    and one upcast; a reason when something else is on the way."""
    walk = Scores(qk=None)  # type: ignore[arg-type]
    scaled_after_mask = False  # walking backwards: a scale met before a mask scales that mask
    upcast = False
    for _ in range(16):
        node = producer(t)
        if node is None:
            return f"the Softmax input {t.name} is not computed from a Q·Kᵀ MatMul"
        if is_op(node, "MatMul"):
            walk.qk = node
            return walk
        if is_op(node, "Cast") or is_op(node, "Identity"):
            src, dst = ctx.elem_type(node.inputs[0]), ctx.elem_type(node.outputs[0])
            if src != dst:
                if upcast or not (src == onnx.TensorProto.FLOAT16 and dst == onnx.TensorProto.FLOAT):
                    return f"the scores are cast from {_type(src)} to {_type(dst)}, not once from float16 to float"
                upcast = True
            walk.nodes.append(node)
            t = node.inputs[0]
            continue
        factor = parts.scalar_factor(ctx, node, t)
        if factor is not None:
            walk.factor *= factor
            walk.nodes.append(node)
            scaled_after_mask = True
            t = ctx.scalar_operand(node)[1] if is_op(node, "Mul") else node.inputs[0]
            continue
        if is_op(node, "Mul") or is_op(node, "Div"):
            return f"the scores are scaled by {node.op} {node.name or ''} with a factor that is not a constant scalar"
        found = _mask_step(ctx, node)
        if found is None:
            return f"the Softmax input is not scale * Q·Kᵀ [+ M]: {node.op} {node.name} is on the way"
        if isinstance(found, str):
            return found
        mask, scores = found
        if scaled_after_mask:
            return "the scores are scaled after a mask is applied"
        mask.elem = ctx.elem_type(node.outputs[0])
        walk.masks.append(mask)
        walk.nodes.append(node)
        t = scores
    return "the chain from Q·Kᵀ to the Softmax is too long"


def _mask_step(ctx: Context, node: gs.Node) -> Union[None, str, tuple[parts.Mask, gs.Tensor]]:
    """(the mask, the scores it is applied to) for an Add, Sub or Where on the scores."""
    if is_add(node):
        a, b = node.inputs
        leads = [_leads_to_matmul(a), _leads_to_matmul(b)]
        if leads == [True, True]:
            return f"cannot tell the scores from the mask in {node.op} {node.name}: both come from a MatMul"
        if leads == [False, False]:
            return None
        return (parts.Mask(b, node), a) if leads[0] else (parts.Mask(a, node), b)
    if is_op(node, "Sub") and _leads_to_matmul(node.inputs[0]) and not _leads_to_matmul(node.inputs[1]):
        return parts.Mask(node.inputs[1], node, negate=True), node.inputs[0]
    if is_op(node, "Where") and len(node.inputs) == 3:
        cond, x, y = node.inputs
        for keep_if, scores, fill in ((True, x, y), (False, y, x)):
            value = scalar(fill)
            if value is not None and _leads_to_matmul(scores):
                if ctx.scalar_against(fill, scores) is None:
                    return f"Where's fill {fill.name} has more axes than the scores"
                if not value <= parts.MASKED:  # NaN too
                    return f"Where puts {value:g} on the masked scores, not a large negative value (<= -1e4)"
                return parts.Mask(cond, node, where=True, live_if=keep_if, fill=value), scores
        return "Where masks the scores with a value that is not a constant scalar"
    return None


def _type(elem: Optional[int]) -> str:
    return "unknown" if not elem else onnx.TensorProto.DataType.Name(elem).lower()


def _softmax_axis_reason(ctx: Context, softmax: gs.Node, rank: int) -> Optional[str]:
    axis = int(softmax.attrs.get("axis", -1 if ctx.opset >= OPSET_SINGLE_AXIS else 1))
    if axis % rank != rank - 1:
        return f"the Softmax is over axis {axis}, not the last axis of the scores"
    return None


def _heads_reason(q_heads, kv_heads, what: str) -> Optional[str]:
    if kv_heads == 1 or parts.same_dim(kv_heads, q_heads):
        return None
    if isinstance(kv_heads, int) and isinstance(q_heads, int) and kv_heads > 0 and q_heads % kv_heads == 0:
        return None
    return f"{what}'s head count ({kv_heads}) does not divide Q's ({q_heads})"


def match(ctx: Context, softmax: gs.Node) -> Optional[Union[Match, str]]:
    found = _weights_reader(ctx, softmax)
    if found is None or not _leads_to_matmul(softmax.inputs[0]):
        return None  # not an attention block: the Softmax rule's business
    pv, after = found
    walk = _scores(ctx, softmax.inputs[0])
    if isinstance(walk, str):
        return walk
    qk = walk.qk
    scores = ctx.shape(qk.outputs[0])
    if scores is None or len(scores) < 2:
        return "the shape of the scores Q·Kᵀ is unknown"
    reason = _softmax_axis_reason(ctx, softmax, len(scores))
    if reason:
        return reason

    q, q_factor, q_nodes = parts.unscaled(ctx, qk.inputs[0])
    k = parts.operand_kv(ctx, qk.inputs[1], is_key=True)
    if isinstance(k, str):
        return k
    v = parts.operand_kv(ctx, pv.inputs[1], is_key=False)
    if isinstance(v, str):
        return v
    shapes = {"Q": ctx.shape(q), "K": ctx.shape(k.tensor), "V": ctx.shape(v.tensor)}
    for what, shape in shapes.items():
        if shape is None or len(shape) < 2:
            return f"{what}'s rank is unknown or below 2"
    elems = {what: ctx.elem_type(t) for what, t in (("Q", q), ("K", k.tensor), ("V", v.tensor))}
    if len(set(elems.values())) != 1:
        return "Q, K and V have different element types: " + ", ".join(f"{w} {_type(e)}" for w, e in elems.items())
    elem = elems["Q"]
    if ctx.elem_type(pv.outputs[0]) != elem:
        return f"the attention output is {_type(ctx.elem_type(pv.outputs[0]))}, Q is {_type(elem)}"
    q_heads = parts.heads(ctx, q)
    for what, t in (("K", k.tensor), ("V", v.tensor)):
        reason = _heads_reason(q_heads, parts.heads(ctx, t), what)
        if reason:
            return reason

    sq, skv = scores[-2], scores[-1]
    causal, masks = False, []
    for mask in walk.masks:
        reason = parts.broadcast_reason(ctx.shape(mask.tensor), scores, q_heads)
        if reason:
            return reason
        live = parts.live_keys(mask)
        kind = parts.masked_pattern(live, sq, skv) if live is not None else None
        if kind is None and live is None and causal_mask.is_causal(ctx, mask, qk.outputs[0]):
            kind = "causal"  # computed at run time, causal for every size the model accepts
        if kind == "causal":
            causal = True
        elif kind != "none":
            masks.append(mask)
    scale = walk.factor * q_factor * k.factor
    reason = parts.finite_scale(scale)
    if reason:
        return reason
    if elem not in SUPPORTED:  # the engine's own check says it too, but M's type is built from it
        return "element type unknown" if elem is None else f"element type {_type(elem)} is not supported"

    plan = parts.Plan(
        q=q,
        k=k.tensor,
        v=v.tensor,
        output=pv.outputs[0],
        scale=scale,
        causal=causal,
        k_transposed=not k.transposed,
        elem=elem,
        masks=masks,
        sq=sq,
        skv=skv,
        cached=parts.reads_cache(ctx, k.tensor, v.tensor, not k.transposed),
        unmasked=not walk.masks,
    )
    remove = [qk, *reversed(walk.nodes), softmax, *after, pv]
    prune = [*q_nodes, *k.nodes, *v.nodes]
    prune += parts.exclusive_upstream([i for n in remove + prune for i in n.inputs], remove + prune)
    return parts.attention_match(plan, remove, prune, size=lambda ctx: static_size(scores))


RULE = Rule("attention", parts.FAMILY, (("", "Softmax"),), match)
