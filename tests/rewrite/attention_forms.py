"""Attention blocks in the forms exporters write, for the attention rule tests.

`block(...)` builds softmax(scale * Q·Kᵀ [+ M]) · V from graph inputs Q
[B, H, Sq, D], K [B, Hkv, S, D] (or KT [B, Hkv, D, S]), V [B, Hkv, S, Dv]
(plus PK/PV, the past, for a KV cache) in one of the forms below, and the
feeds to run it."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .builders import F16, F32, NP, Graph

LOWEST = float(np.finfo(np.float32).min)


def triangle(sq: int, skv: int) -> np.ndarray:
    """True where query i sees key j (j <= i + Skv - Sq)."""
    return np.arange(skv)[None, :] <= np.arange(sq)[:, None] + (skv - sq)


def _repeat_heads(g: Graph, x: str, b: int, h_kv: int, n: int, rows: int, cols: int, how: str) -> str:
    """Hugging Face's repeat_kv: [B, Hkv, R, C] -> [B, Hkv * n, R, C], as torch.onnx exports it."""
    axis = 2 if how in ("expand", "tile") else 1  # "interleave": the new axis before the heads
    u = g.node("Unsqueeze", [x, g.const(np.array([axis]), dtype=np.int64)])
    spread = [b, h_kv, n, rows, cols] if axis == 2 else [b, n, h_kv, rows, cols]
    if how == "tile":
        e = g.node("Tile", [u, g.const(np.array([1, 1, n, 1, 1]), dtype=np.int64)])
    else:
        e = g.node("Expand", [u, g.const(np.array(spread), dtype=np.int64)])
    return g.node("Reshape", [e, g.const(np.array([b, h_kv * n, rows, cols]), dtype=np.int64)])


def block(
    dtype=F32,
    b=2,
    h=4,
    h_kv=None,
    sq=16,
    skv=None,
    d=8,
    dv=None,
    scale="div",
    k_form="transpose",
    mask=None,
    softmax_cast=False,
    past=0,
    repeat="expand",
    axis=-1,
    seed=0,
    mask_value=None,
):
    """(model, feeds). scale: "div" | "mul" (on the scores) | "q" (on Q) | "split" (sqrt on Q and K) | "none".
    k_form: "transpose" (MatMul(Q, Transpose(K))) | "pre" (K given as [B, Hkv, D, S]).
    mask: None | "add" (input M [B, 1, 1, Skv]) | "sub" | "where" (input bool C [B, 1, Sq, Skv]) |
    "sdpa_bool" (Add of Where(C, 0, -inf)) | "causal_where" (constant lower-triangular bool, Sliced) |
    "causal_add" (constant triangular bias, mask_value above the diagonal) | "causal_where+add".
    past: the length of a KV cache (K = Concat(PK, K), Skv = past + new keys).
    repeat: how K/V heads are repeated when h_kv < h ("expand", "tile", "interleave")."""
    h_kv = h_kv or h
    new = (skv or sq) - past
    skv = past + new
    dv = dv or d
    g = Graph(dtype)
    np_t = NP[dtype]
    inputs = {"Q": [b, h, sq, d], "V": [b, h_kv, new, dv]}
    if k_form == "pre":
        inputs["KT"] = [b, h_kv, d, new]
    else:
        inputs["K"] = [b, h_kv, new, d]
    k_in = "KT" if k_form == "pre" else "K"
    k, v = k_in, "V"
    if past:
        inputs["PK"] = [b, h_kv, d, past] if k_form == "pre" else [b, h_kv, past, d]
        inputs["PV"] = [b, h_kv, past, dv]
        k = g.node("Concat", ["PK", k], name="cache_k", axis=3 if k_form == "pre" else 2)
        v = g.node("Concat", ["PV", v], name="cache_v", axis=2)
    if h_kv != h:
        rows, cols = (d, skv) if k_form == "pre" else (skv, d)
        k = _repeat_heads(g, k, b, h_kv, h // h_kv, rows, cols, repeat)
        v = _repeat_heads(g, v, b, h_kv, h // h_kv, skv, dv, repeat)
    q = "Q"
    c = 1.0 / np.sqrt(d)
    if scale == "q":
        q = g.node("Mul", [q, g.const(c)], name="q_scale")
    if scale == "split":
        q = g.node("Mul", [q, g.const(np.sqrt(c))], name="q_scale")
    kt = g.node("Transpose", [k], name="k_t", perm=[0, 1, 3, 2]) if k_form == "transpose" else k
    if scale == "split":
        kt = g.node("Mul", [kt, g.const(np.sqrt(c))], name="k_scale")
    s = g.node("MatMul", [q, kt], name="qk")
    if scale == "div":
        s = g.node("Div", [s, g.const(np.sqrt(d))], name="scale")
    if scale == "mul":
        s = g.node("Mul", [g.const(c), s], name="scale")
    feeds = {}
    rng = np.random.default_rng(seed)
    fill = float(np.finfo(np_t).min) if mask_value is None else mask_value
    if mask in ("causal_where", "causal_where+add"):
        big = max(skv, 8) + 3
        bias = g.const(np.tril(np.ones((1, 1, big, big), bool)), name="bias", dtype=bool)
        sliced = g.node(
            "Slice",
            [
                bias,
                g.const(np.array([skv - sq, 0]), dtype=np.int64),
                g.const(np.array([skv, skv]), dtype=np.int64),
                g.const(np.array([2, 3]), dtype=np.int64),
            ],
            name="bias_slice",
        )
        s = g.node("Where", [sliced, s, g.const(fill)], name="causal")
    if mask in ("add", "causal_where+add"):
        inputs["M"] = [b, 1, 1, skv]
        m = np.zeros((b, 1, 1, skv), np_t)
        m[0, ..., skv - max(1, skv // 4) :] = fill if mask_value is not None else -np.inf  # padded keys of batch 0
        feeds["M"] = m
        s = g.node("Add", [s, "M"], name="mask")
    if mask == "sub":
        inputs["M"] = [b, 1, 1, skv]
        m = np.zeros((b, 1, 1, skv), np_t)
        m[0, ..., -2:] = 1e4
        feeds["M"] = m
        s = g.node("Sub", [s, "M"], name="mask")
    if mask in ("where", "sdpa_bool"):
        inputs["C"] = ([b, 1, sq, skv], TensorProto.BOOL)
        feeds["C"] = rng.random((b, 1, sq, skv)) < 0.7
        feeds["C"][..., 0] = True  # every query row keeps a key
        if mask == "where":
            s = g.node("Where", ["C", s, g.const(fill)], name="mask")
        else:
            additive = g.node("Where", ["C", g.const(0.0), g.const(-np.inf)], name="bool_to_add")
            s = g.node("Add", [s, additive], name="mask")
    if mask == "causal_add":
        bias = np.where(triangle(sq, skv), 0.0, -np.inf if mask_value is None else mask_value)[None, None]
        s = g.node("Add", [s, g.const(bias, name="causal_bias")], name="mask")
    if softmax_cast:
        s = g.node("Cast", [s], name="up", to=TensorProto.FLOAT)
    p = g.node("Softmax", [s], name="softmax", axis=axis)
    if softmax_cast:
        p = g.node("Cast", [p], name="down", to=dtype)
    y = g.node("MatMul", [p, v], name="pv")
    model = g.model(inputs, {y: [b, h, sq, dv]}, opset=17)
    for name, shape in inputs.items():
        if name not in feeds:
            feeds[name] = (rng.standard_normal(shape) * 1.5).astype(np_t)
    return model, feeds


def bound(feeds: dict, dtype=F32, order: int = 2) -> float:
    """The op's error bound against the original graph: 2e-3 x max|V| at order 2 (docs/ops.md),
    plus float16's rounding of the output and of the scores in the original graph."""
    v = max(float(np.abs(feeds[n]).max()) for n in ("V", "PV") if n in feeds)
    per_order = {1: 3e-2, 2: 2e-3, 3: 1e-4}[order]
    return (per_order + (4e-3 if dtype == F16 else 1e-6)) * v
