"""Constant scalars, stored or computed.

ONNX function bodies (and ORT's inlining of them) compute their constants in
the graph: Swish's alpha is CastLike(alpha, x), tanh-GELU's sqrt(2/pi) is
Sqrt(CastLike(2/pi, x)). A tensor counts as a constant scalar when it is a
one-element initializer / Constant, or the output of a small pure op whose
data inputs are constant scalars themselves; it is evaluated here with numpy
(float64, or int64 where ONNX would compute in integers). The nodes computing
it are returned too, so a replacement can drop those nothing else reads.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .match import DEFAULT_DOMAINS, const_shape, const_value, producer

MAX_DEPTH = 8  # function bodies need 2 (Sqrt(CastLike(c))); deeper is not a constant an exporter writes
_SMALL = 8  # elements of a shape / axes input

_UNARY = {  # Sqrt and Reciprocal exist for float types only
    "Sqrt": lambda v: np.sqrt(v.astype(np.float64)),
    "Reciprocal": lambda v: 1.0 / v.astype(np.float64),
    "Neg": np.negative,
    "Identity": lambda v: v,
}
_BINARY = {
    "Mul": np.multiply,
    "Add": np.add,
    "Sub": np.subtract,
    "Div": lambda a, b: np.trunc(a / b).astype(np.int64) if a.dtype.kind == b.dtype.kind == "i" else a / b,
}


def scalar_value(tensor: gs.Tensor) -> Optional[np.ndarray]:
    """The value of a constant scalar (one element, any rank: callers judge broadcasting), or None."""
    found = computation(tensor)
    return None if found is None else found[0]


def scalar(tensor: gs.Tensor) -> Optional[float]:
    """scalar_value as a float."""
    value = scalar_value(tensor)
    return None if value is None else float(value.reshape(()))


def computation(tensor: gs.Tensor) -> Optional[tuple[np.ndarray, list[gs.Node]]]:
    """(value, the nodes computing it, Constant nodes included) for a constant scalar, or None."""
    nodes: list[gs.Node] = []
    value = _evaluate(tensor, MAX_DEPTH, nodes, scalar=True)
    return None if value is None else (value, nodes)


def _numeric(value: np.ndarray) -> Optional[np.ndarray]:
    if np.issubdtype(value.dtype, np.floating):
        return value.astype(np.float64)
    if np.issubdtype(value.dtype, np.integer):
        return value.astype(np.int64)
    return None  # bool, string: not a number a pattern compares


def _evaluate(tensor: gs.Tensor, depth: int, nodes: list[gs.Node], scalar: bool) -> Optional[np.ndarray]:
    """scalar: one element (a data input); else a small integer vector (a shape or axes input)."""

    def fits(size: int) -> bool:
        return size == 1 if scalar else size <= _SMALL

    node = producer(tensor)
    shape = const_shape(tensor)  # checked before loading: a big weight is never read here
    if shape is not None:
        value = const_value(tensor) if fits(int(np.prod(shape))) else None
        value = None if value is None or not fits(value.size) else _numeric(value)
    elif node is None or depth == 0 or (node.domain or "") not in DEFAULT_DOMAINS or len(node.outputs) != 1:
        return None
    else:
        value = _apply(node, depth - 1, nodes)
        value = value if value is not None and fits(value.size) else None
    if value is not None and node is not None:
        nodes.append(node)
    return value


def _apply(node: gs.Node, depth: int, nodes: list[gs.Node]) -> Optional[np.ndarray]:
    op, inputs = node.op, list(node.inputs)

    def data(i: int) -> Optional[np.ndarray]:
        return _evaluate(inputs[i], depth, nodes, scalar=True) if len(inputs) > i and inputs[i].name else None

    if op in _UNARY and len(inputs) == 1:
        a = data(0)
        if a is None:
            return None
        with np.errstate(all="ignore"):
            return _finite(_UNARY[op](a))
    if op in _BINARY and len(inputs) == 2:
        a, b = data(0), data(1)
        if a is None or b is None:
            return None
        if op == "Div" and b.dtype.kind == "i" and not b.any():
            return None
        with np.errstate(all="ignore"):
            return _finite(_BINARY[op](a, b))
    if op == "Cast" and len(inputs) == 1:
        a = data(0)
        return None if a is None else _cast(a, node.attrs.get("to"))
    if op == "CastLike" and len(inputs) == 2:
        a = data(0)
        # The second input only gives the type. Unknown: float, the type of every tensor a rule replaces.
        dtype = inputs[1].dtype if inputs[1].dtype is not None else np.float64
        return None if a is None else _cast(a, _onnx_type(dtype))
    if op in ("Reshape", "Unsqueeze", "Squeeze"):
        return _reshaped(node, data(0), depth, nodes)
    return None


def _finite(value: np.ndarray) -> Optional[np.ndarray]:
    # sqrt(-1), 1/0: no pattern wants them, and a nan would give a nonsense "not close" reason
    return value if np.all(np.isfinite(value)) else None


def _onnx_type(dtype) -> Optional[int]:
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except (TypeError, KeyError):
        return None


def _cast(value: np.ndarray, to: Optional[int]) -> Optional[np.ndarray]:
    if to is None:
        return None
    try:
        target = onnx.helper.tensor_dtype_to_np_dtype(int(to))
    except (KeyError, ValueError, TypeError):
        return None
    if np.issubdtype(target, np.floating):
        return value.astype(np.float64)  # float32/16 rounding stays within the rules' tolerance
    if np.issubdtype(target, np.integer):
        return np.trunc(value).astype(np.int64)
    return None


def _reshaped(node: gs.Node, value: Optional[np.ndarray], depth: int, nodes: list[gs.Node]) -> Optional[np.ndarray]:
    """Reshape / Unsqueeze / Squeeze of a one-element value: only its rank changes, which the
    rules compare with their data's rank (a [1, 1, 1] constant would broadcast it up)."""
    if value is None:
        return None
    inputs = node.inputs
    if len(inputs) > 1 and inputs[1].name:
        arg = _evaluate(inputs[1], depth, nodes, scalar=False)
        if arg is None or arg.dtype.kind != "i":
            return None
        arg = [int(v) for v in arg.reshape(-1)]
    elif node.op == "Reshape":
        return None
    else:
        arg = node.attrs.get("axes")  # before opset 13
        arg = None if arg is None else [int(v) for v in arg]
    try:
        if node.op == "Reshape":
            copy = not node.attrs.get("allowzero", 0)  # 0 copies the input's dim unless allowzero
            dims = [value.shape[i] if copy and d == 0 and i < value.ndim else d for i, d in enumerate(arg)]
            return value.reshape(dims)
        if node.op == "Unsqueeze":
            return None if arg is None else np.expand_dims(value, tuple(arg))
        return np.squeeze(value, axis=None if arg is None else tuple(arg))
    except ValueError:  # numpy's AxisError included
        return None
