"""Where ONNX Runtime would run an activation in its blocked NCHWc conv layout.

At ORT_ENABLE_ALL, ORT's NchwcTransformer (CPU, x86-64 MLAS) turns 2-D float
Conv / FusedConv (and MaxPool / AveragePool) into com.microsoft.nchwc ops on
channel-blocked tensors, and carries the blocked layout forward through the
ops it knows, as long as every non-constant input is already blocked:
activations (Relu, Sigmoid, Tanh, Clip, ... fused into the conv when it has a
single reader; com.microsoft QuickGelu and Gelu, ONNX Gelu run blocked),
same-shape Add / Sum / Mul, Concat, BatchNormalization, GlobalAveragePool /
GlobalMaxPool, nearest Resize. Anything else (a com.quake op, Exp, Erf,
Softmax, Div, a broadcasting Mul such as a squeeze-excitation gate) gets a
ReorderOutput before it, and a Conv after it a ReorderInput: each a full pass
over the activation tensor. Measured with ORT 1.32 (docs/optimize.md).

So replacing such an activation costs two passes where it sat inside the
layout, or loses the Conv+activation fusion; the rules that would (SiLU,
Sigmoid, the GELU forms ORT runs blocked) leave it with `NCHWC_REASON`.
Exp, Softmax and LogSoftmax are not in ORT's list: it reorders around them
anyway, so replacing them costs no extra pass.

The checks lean towards "blocked": a node kept for nothing costs its speed-up,
a node replaced wrongly costs more than it saves.
"""

from __future__ import annotations

from typing import Optional

import onnx
import onnx_graphsurgeon as gs

from .match import DEFAULT_DOMAINS, const_shape, const_value, consumers, producer

MS = "com.microsoft"
NCHWC_DOMAIN = "com.microsoft.nchwc"

NCHWC_REASON = "kept for ONNX Runtime's NCHWc conv layout (a custom op would add two reorders)"
FUSION_REASON = "kept for ONNX Runtime's Conv+Sigmoid fusion (FusedConv)"
# Reasons about the node itself, not the pattern: once one rule gives one, the others are not tried.
BLOCKED_REASON = "its input is in ONNX Runtime's blocked NCHWc layout, where only a plain elementwise op is valid"
NODE_REASONS = frozenset({NCHWC_REASON, FUSION_REASON})

# Ops that start a blocked tensor whatever their input (subject to the checks in _is_source).
_SOURCES = {("", "Conv"), (MS, "FusedConv"), ("", "MaxPool"), ("", "AveragePool")}
# Ops ORT runs blocked when every non-constant input is blocked.
_UNARY = {
    ("", op)
    for op in (
        "Relu",
        "Sigmoid",
        "Tanh",
        "LeakyRelu",
        "HardSigmoid",
        "HardSwish",
        "Clip",
        "Gelu",
        "BatchNormalization",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Resize",
        "Upsample",
        "Identity",
        "Dropout",
    )
} | {(MS, "QuickGelu"), (MS, "Gelu")}
_ELEMENTWISE_BINARY = {("", "Add"), ("", "Sum"), ("", "Mul")}
_CONCAT = ("", "Concat")

# Elementwise ops whose output keeps their input's layout: what a blocked tensor may flow through
# in a model ORT has already laid out (ort_level="all"), com.quake's own included.
LAYOUT_PRESERVING = (
    _UNARY
    | _ELEMENTWISE_BINARY
    | {("com.quake", op) for op in ("Silu", "Sigmoid", "Gelu", "Exp")}
    | {("", op) for op in ("Exp", "Erf", "Neg", "Abs", "Sqrt", "Div", "Sub", "Elu", "Softplus")}
)


def _key(node: gs.Node) -> tuple[str, str]:
    domain = node.domain or ""
    return ("" if domain in DEFAULT_DOMAINS else domain, node.op)


def _is_constant(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Constant) or const_value(tensor) is not None


def _is_source(node: gs.Node, elem_type) -> bool:
    """A Conv / FusedConv ORT can lay out: a constant float 4-D weight (a 2-D convolution).
    Channel alignment is left out on purpose: the block size is 8 or 16 depending on the
    CPU running the model, so any channel count may be blocked somewhere."""
    if _key(node) in {("", "MaxPool"), ("", "AveragePool")}:
        return len(node.inputs) > 0 and elem_type(node.inputs[0]) in (None, onnx.TensorProto.FLOAT)
    if len(node.inputs) < 2 or not _is_constant(node.inputs[1]):
        return False
    shape = const_shape(node.inputs[1])
    return shape is not None and len(shape) == 4 and elem_type(node.inputs[1]) == onnx.TensorProto.FLOAT


def would_be_blocked(tensor: gs.Tensor, elem_type, shape) -> bool:
    """Whether ORT's NchwcTransformer would hold `tensor` in the blocked layout.
    elem_type / shape: the context's lookups (tensor -> value or None)."""
    memo: dict[int, bool] = {}
    stack: list[tuple[gs.Tensor, bool]] = [(tensor, False)]
    while stack:  # iterative: residual chains of a deep CNN are longer than Python's recursion limit
        current, expanded = stack.pop()
        if id(current) in memo:
            continue
        node = producer(current)
        if node is None:
            memo[id(current)] = False
            continue
        key = _key(node)
        if node.domain == NCHWC_DOMAIN:
            memo[id(current)] = key[1] != "ReorderOutput"
            continue
        if key in _SOURCES:
            memo[id(current)] = _is_source(node, elem_type)
            continue
        if key in _UNARY:
            inputs = [t for t in node.inputs[:1] if t.name]
        elif key in _ELEMENTWISE_BINARY or key == _CONCAT:
            inputs = [t for t in node.inputs if t.name and not _is_constant(t)]
            if key != _CONCAT and not _same_shapes(inputs, shape):
                memo[id(current)] = False  # a broadcasting Mul (squeeze-excitation gate) is not blocked
                continue
        else:
            memo[id(current)] = False
            continue
        if not inputs:
            memo[id(current)] = False
            continue
        pending = [t for t in inputs if id(t) not in memo]
        if pending and not expanded:
            stack.append((current, True))
            stack.extend((t, False) for t in pending)
            continue
        memo[id(current)] = all(memo.get(id(t), False) for t in inputs)
    return memo[id(tensor)]


def _same_shapes(tensors: list[gs.Tensor], shape) -> bool:
    shapes = [shape(t) for t in tensors]
    known = [s for s in shapes if s is not None]
    if len(known) < 2:
        return True  # unknown: assume ORT may block it
    return all(s == known[0] for s in known)


def feeds_layout(tensor: gs.Tensor, graph: gs.Graph) -> bool:
    """Whether some reader of `tensor` would take it blocked (a conv, a pool, an op the layout
    flows through, a Transpose to NHWC, which ORT folds into its ReorderOutput). When none does,
    ORT reorders right after the activation anyway, and a custom op costs no extra pass."""
    for node in consumers(tensor):
        key = _key(node)
        if key in _SOURCES or key in _UNARY or key in _ELEMENTWISE_BINARY or key == _CONCAT:
            return True
        if node.domain == NCHWC_DOMAIN:
            return True
        if key == ("", "Transpose") and list(node.attrs.get("perm", [])) == [0, 2, 3, 1]:
            return True
    return False


def conv_fusion_target(x: gs.Tensor, ctx) -> bool:
    """x is the only reader's input straight from a Conv / FusedConv without an activation, in
    the graph being visited: ORT's ConvActivationFusion would fold a Sigmoid here (in any
    layout). ORT fuses within one graph: a Conv outside an If branch or a Loop body is not one."""
    node = producer(x)
    if node is None or _key(node) not in {("", "Conv"), (MS, "FusedConv")} or not ctx.local(node):
        return False
    if node.attrs.get("activation"):
        return False
    return len(consumers(x)) == 1 and not ctx.scopes.is_output(x)


def conv_layout_reason(ctx, rule, anchor: gs.Node, x: gs.Tensor, y: gs.Tensor) -> Optional[str]:
    """Why a rule that replaces an activation ORT keeps in conv layouts must leave it, or None."""
    if rule.name == "sigmoid" and conv_fusion_target(anchor.inputs[0], ctx):
        return FUSION_REASON
    if ctx.elem_type(x) != onnx.TensorProto.FLOAT:  # ORT blocks float32 only
        return None
    rank = ctx.rank(x)
    if rank is not None and rank != 4:
        return None
    if would_be_blocked(x, ctx.elem_type, ctx.shape) and feeds_layout(y, ctx.graph):
        return NCHWC_REASON
    return None


def is_blocked(tensor: gs.Tensor) -> bool:
    """In a model ORT has already laid out: whether `tensor` holds blocked NCHWc data
    (produced by a com.microsoft.nchwc op other than ReorderOutput, possibly through
    elementwise ops)."""
    seen: set[int] = set()
    stack = [tensor]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        node = producer(current)
        if node is None:
            continue
        if node.domain == NCHWC_DOMAIN:
            if node.op != "ReorderOutput":
                return True
            continue
        if _key(node) in LAYOUT_PRESERVING:
            stack.extend(t for t in node.inputs if t.name and not _is_constant(t))
    return False
