"""com.microsoft.MultiHeadAttention -> com.quake Attention.

ONNX Runtime's op (contrib ops) with separate Q, K, V: query [B, Sq, N * H];
key and value [B, Skv, N * H] (split into heads here by Reshape + Transpose)
or already [B, N, Skv, H]; optional key_padding_mask [B, Skv] (a key whose mask
is 0 gets mask_filter_value added, as ORT's CPU kernel does) and
attention_bias [B|1, N|1, Sq, Skv] (added); scale (0: 1/sqrt(H));
unidirectional=1 becomes causal=1 where Sq = Skv. Kept, with the reason: packed
QKV or KV, a bias input, a past, other key_padding_mask forms (lengths),
present or qk outputs that are read.
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

QUERY, KEY, VALUE, BIAS, KEY_PADDING_MASK, ATTENTION_BIAS, PAST_KEY, PAST_VALUE = range(8)
DEFAULT_FILTER = -10000.0  # ORT's default mask_filter_value


def _refusal(ctx: Context, node: gs.Node) -> Optional[str]:
    if parts.optional_input(node, KEY) is None or parts.optional_input(node, VALUE) is None:
        return "packed QKV (no separate key and value) is not mapped"
    if parts.optional_input(node, BIAS) is not None:
        return "a bias input is not mapped"
    if any(parts.optional_input(node, i) is not None for i in range(PAST_KEY, len(node.inputs))):
        return "past key/value (and past_sequence_length, cache_indirection) are not mapped"
    used = parts.extra_outputs_used(ctx, node)
    if used is not None:
        return f"its output {used} (present key/value or qk) is read"
    return None


def match(ctx: Context, node: gs.Node) -> Optional[Union[Match, str]]:
    reason = _refusal(ctx, node)
    if reason:
        return reason
    heads = int(node.attrs.get("num_heads", 0))
    q, k, v = node.inputs[QUERY], node.inputs[KEY], node.inputs[VALUE]
    q_shape, k_shape, v_shape = ctx.shape(q), ctx.shape(k), ctx.shape(v)
    if q_shape is None or len(q_shape) != 3:
        return "query is not [B, S, N * H] (packed QKV or unknown rank)"
    if k_shape is None or v_shape is None or len(k_shape) != len(v_shape) or len(k_shape) not in (3, 4):
        return "key and value are neither both [B, S, N * H] nor both [B, N, S, H]"
    h = parts.head_size(q_shape, heads, "query")
    if isinstance(h, str):
        return h
    kv_split = len(k_shape) == 3
    skv = k_shape[1] if kv_split else k_shape[2]
    scale = float(node.attrs.get("scale", 0.0)) or 1.0 / math.sqrt(h)
    causal = bool(node.attrs.get("unidirectional", 0))
    if causal and not parts.same_dim(q_shape[1], skv):
        return "unidirectional with Sq and Skv not provably equal (ORT's alignment then differs from causal=1's)"
    padding = parts.optional_input(node, KEY_PADDING_MASK)
    if padding is not None:
        p_shape = ctx.shape(padding)
        if p_shape is None or len(p_shape) != 2:
            return "key_padding_mask is not [B, Skv] (the lengths forms are not mapped)"
        if ctx.elem_type(padding) != onnx.TensorProto.INT32:
            return "key_padding_mask is not int32"
    bias = parts.optional_input(node, ATTENTION_BIAS)
    if bias is not None:
        reason = parts.broadcast_reason(ctx.shape(bias), [q_shape[0], heads, q_shape[1], skv], heads)
        if reason:
            return reason
    if padding is None and bias is None and not causal:
        # ORT runs its own flash kernel for exactly this case (no mask, bias,
        # causal flag or past), measured 1.04-1.15x com.quake Attention at
        # S >= 512 (BENCHMARKS.md, "Zen 4: attention"); with any of them it
        # falls back to unfused products, where the fused op pays.
        return "ORT's own flash attention runs this MultiHeadAttention (no mask, bias or causal flag)"
    fill = float(node.attrs.get("mask_filter_value", DEFAULT_FILTER))
    elem = ctx.elem_type(q)
    out = node.outputs[0]

    def build(ctx: Context) -> list[NodeSpec]:
        base = out.name
        specs: list[NodeSpec] = []
        qh = parts.split_heads(ctx, q, heads, base, specs)
        kh = parts.split_heads(ctx, k, heads, base, specs) if kv_split else k
        vh = parts.split_heads(ctx, v, heads, base, specs) if kv_split else v
        m = _mask(ctx, padding, bias, fill, elem, base, specs)
        y = ctx.variable(f"{base}/quake_attention")
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
        parts.merge_heads(ctx, y, out, base, specs)
        return specs

    extras = [f"scale={scale:.6g}"] + (["causal"] if causal else []) + (["mask"] if padding or bias else [])
    return parts.fused_match(
        node,
        q,
        build,
        f"com.quake Attention ({', '.join(extras)}) between head reshapes",
        parts.scores_size(ctx, q_shape[0], heads, q_shape[1], skv),
        sq=q_shape[1],
        causal=causal,
    )


def _mask(
    ctx: Context,
    padding: Optional[gs.Tensor],
    bias: Optional[gs.Tensor],
    fill: float,
    elem: int,
    base: str,
    specs: list[NodeSpec],
) -> Optional[gs.Tensor]:
    """M = Reshape(Where(key_padding_mask > 0, 0, fill), [B, 1, 1, Skv]) [+ attention_bias]."""
    m = None
    if padding is not None:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        zero_int = gs.Constant(ctx.names.tensor(f"{base}/quake_kpm_zero"), np.zeros((), np.int32))
        live = ctx.variable(f"{base}/quake_kpm_live")
        specs.append(NodeSpec("Greater", [padding, zero_int], [live], domain=""))
        zero = gs.Constant(ctx.names.tensor(f"{base}/quake_mask_zero"), np.zeros((), dtype))
        filler = gs.Constant(ctx.names.tensor(f"{base}/quake_mask_fill"), np.asarray(fill, dtype))
        flat = ctx.variable(f"{base}/quake_kpm")
        specs.append(NodeSpec("Where", [live, zero, filler], [flat], domain=""))
        shape = gs.Constant(ctx.names.tensor(f"{base}/quake_kpm_shape"), np.array([0, 1, 1, -1], np.int64))
        m = ctx.variable(f"{base}/quake_mask")
        specs.append(NodeSpec("Reshape", [flat, shape], [m], domain=""))
    if bias is not None:
        if m is None:
            return bias
        total = ctx.variable(f"{base}/quake_mask")
        specs.append(NodeSpec("Add", [m, bias], [total], domain=""))
        m = total
    return m


RULE = Rule("mha", parts.FAMILY, (("com.microsoft", "MultiHeadAttention"),), match)
