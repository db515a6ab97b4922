"""ONNX Attention (opset 23) -> com.quake Attention.

Q [B, N, Sq, H], K [B, Nkv, Skv, H], V [B, Nkv, Skv, Hv] (or the 3-D
[B, S, N * H] forms with q_num_heads / kv_num_heads, split into heads here);
grouped-query attention as ONNX defines it (query head h reads key/value head
h // (N / Nkv)), which is com.quake Attention's; attn_mask float (added) or
bool (True = attend: Where(mask, 0, -inf)) with its last axis Skv; scale
(default 1/sqrt(H)); is_causal=1 becomes causal=1 where Sq = Skv (ONNX aligns
its triangle top-left without a past, causal=1 bottom-right: the same only
then). Kept, with the reason: past_key/past_value, softcap, nonpad_kv_seqlen,
sliding windows, present or qk outputs that are read.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..context import Context
from ..rule import Match, NodeSpec, Rule, quake
from . import attention_parts as parts

Q, K, V, MASK, PAST_KEY, PAST_VALUE, NONPAD = range(7)


def _refusal(ctx: Context, node: gs.Node) -> Optional[str]:
    if any(parts.optional_input(node, i) is not None for i in (PAST_KEY, PAST_VALUE)):
        return "past_key/past_value are not mapped"
    if parts.optional_input(node, NONPAD) is not None:
        return "nonpad_kv_seqlen is not mapped"
    if float(node.attrs.get("softcap", 0.0)) != 0.0:
        return "softcap is not mapped"
    if int(node.attrs.get("left_window_size", -1)) >= 0 or int(node.attrs.get("right_window_size", -1)) >= 0:
        return "sliding windows are not mapped"
    used = parts.extra_outputs_used(ctx, node)
    if used is not None:
        return f"its output {used} (present key/value or qk_matmul_output) is read"
    return None


def match(ctx: Context, node: gs.Node) -> Optional[Union[Match, str]]:
    reason = _refusal(ctx, node)
    if reason:
        return reason
    q, k, v = node.inputs[Q], node.inputs[K], node.inputs[V]
    shapes = [ctx.shape(t) for t in (q, k, v)]
    if any(s is None for s in shapes) or len({len(s) for s in shapes}) != 1 or len(shapes[0]) not in (3, 4):
        return "Q, K and V are neither all 4-D nor all 3-D"
    q_shape, k_shape, _ = shapes
    split = len(q_shape) == 3
    if split:
        q_heads, kv_heads = int(node.attrs.get("q_num_heads", 0)), int(node.attrs.get("kv_num_heads", 0))
        h = parts.head_size(q_shape, q_heads, "Q")
        if isinstance(h, str):
            return h
        sq, skv = q_shape[1], k_shape[1]
    else:
        q_heads, kv_heads, h = q_shape[1], k_shape[1], q_shape[3]
        sq, skv = q_shape[2], k_shape[2]
        if not isinstance(h, int):
            return "Q's head size is not static (the default scale needs it)"
    if not (isinstance(q_heads, int) and isinstance(kv_heads, int) and kv_heads > 0 and q_heads % kv_heads == 0):
        return f"the key/value heads ({kv_heads}) do not divide the query heads ({q_heads})"
    scale = float(node.attrs["scale"]) if "scale" in node.attrs else 1.0 / math.sqrt(h)
    causal = bool(node.attrs.get("is_causal", 0))
    if causal and not parts.same_dim(sq, skv):
        return "is_causal with Sq and Skv not provably equal (ONNX's top-left triangle then differs from causal=1's)"
    mask = parts.optional_input(node, MASK)
    if mask is not None:
        reason = parts.broadcast_reason(ctx.shape(mask), [q_shape[0], q_heads, sq, skv], q_heads)
        if reason:
            return reason
        if not parts.same_dim(ctx.shape(mask)[-1], skv):
            return "attn_mask's last axis is not Skv (ONNX pads a shorter one with -inf)"
    mask_is_bool = mask is not None and ctx.elem_type(mask) == onnx.TensorProto.BOOL
    elem = ctx.elem_type(q)
    out = node.outputs[0]

    def build(ctx: Context) -> list[NodeSpec]:
        base = out.name
        specs: list[NodeSpec] = []
        qh, kh, vh = q, k, v
        if split:
            qh = parts.split_heads(ctx, q, q_heads, base, specs)
            kh = parts.split_heads(ctx, k, kv_heads, base, specs)
            vh = parts.split_heads(ctx, v, kv_heads, base, specs)
        m = mask
        if mask_is_bool:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
            zero = gs.Constant(ctx.names.tensor(f"{base}/quake_mask_zero"), np.zeros((), dtype))
            fill = gs.Constant(ctx.names.tensor(f"{base}/quake_mask_fill"), np.asarray(-np.inf, dtype))
            m = ctx.variable(f"{base}/quake_mask")
            specs.append(NodeSpec("Where", [mask, zero, fill], [m], domain=""))
        y = ctx.variable(f"{base}/quake_attention") if split else out
        specs.append(
            quake(
                "Attention",
                [qh, kh, vh] + ([m] if m is not None else []),
                [y],
                ctx,
                scale=float(np.float32(scale)),
                causal=int(causal),
                k_transposed=0,
            )
        )
        if split:
            parts.merge_heads(ctx, y, out, base, specs)
        return specs

    extras = [f"scale={scale:.6g}"] + (["causal"] if causal else []) + (["mask"] if mask is not None else [])
    return parts.fused_match(
        node,
        q,
        build,
        f"com.quake Attention ({', '.join(extras)})",
        parts.scores_size(ctx, q_shape[0], q_heads, sq, skv),
        sq=sq,
        causal=causal,
        masked=mask is not None,
    )


RULE = Rule("onnx_attention", parts.FAMILY, (("", "Attention"),), match)
