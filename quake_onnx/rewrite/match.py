"""Small structural matcher: stored constants, tolerance, commutative operand order, producers and consumers.

onnx-graphsurgeon gives the graph; these helpers answer the questions every
rule asks of it, so the rules read as the pattern they match.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import numpy as np
import onnx_graphsurgeon as gs

DEFAULT_DOMAINS = ("", "ai.onnx")
REL_TOL = 1e-3  # exporters write sqrt(2) etc. in float32 or round them to a few digits


def is_op(node: Optional[gs.Node], op: str, domains: Iterable[str] = DEFAULT_DOMAINS) -> bool:
    return node is not None and node.op == op and (node.domain or "") in domains


def is_add(node: Optional[gs.Node]) -> bool:
    """Add, or a Sum of two inputs: ONNX's function bodies (Gelu's) write Sum where exporters write Add."""
    return is_op(node, "Add") or (is_op(node, "Sum") and len(node.inputs) == 2)


def producer(tensor: gs.Tensor) -> Optional[gs.Node]:
    return tensor.inputs[0] if tensor.inputs else None


def const_value(tensor: gs.Tensor) -> Optional[np.ndarray]:
    """The value of an initializer or of a Constant node's output; None when it is computed."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if not is_op(node, "Constant"):
        return None
    attrs = node.attrs
    if isinstance(attrs.get("value"), gs.Constant):
        return np.asarray(attrs["value"].values)
    if "value_float" in attrs:
        return np.asarray(attrs["value_float"], np.float32)
    if "value_floats" in attrs:
        return np.asarray(attrs["value_floats"], np.float32)
    if "value_int" in attrs:
        return np.asarray(attrs["value_int"], np.int64)
    if "value_ints" in attrs:
        return np.asarray(attrs["value_ints"], np.int64)
    return None


def const_shape(tensor: gs.Tensor) -> Optional[tuple[int, ...]]:
    """A constant's shape without loading its values (big weights may be lazy or set aside)."""
    if isinstance(tensor, gs.Constant):
        return tuple(tensor.shape)
    node = producer(tensor)
    if not is_op(node, "Constant"):
        return None
    if isinstance(node.attrs.get("value"), gs.Constant):
        return tuple(node.attrs["value"].shape)
    value = const_value(tensor)  # the small value_* attribute forms
    return None if value is None else value.shape


def close(value: Optional[float], target: float, rel: float = REL_TOL) -> bool:
    return value is not None and abs(value - target) <= rel * abs(target)


def operands(node: gs.Node, first: Callable[[gs.Tensor], bool]) -> Optional[tuple[gs.Tensor, gs.Tensor]]:
    """For a commutative binary node: (the operand satisfying `first`, the other one), trying both orders."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if first(a):
        return a, b
    if first(b):
        return b, a
    return None


def other_operand(node: gs.Node, tensor: gs.Tensor) -> Optional[gs.Tensor]:
    pair = operands(node, lambda t: t is tensor)
    return None if pair is None else pair[1]


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    # gs shares outer tensors with subgraphs, so readers inside If/Loop bodies count too.
    return list(tensor.outputs)


def reader(tensor: gs.Tensor, op: str) -> Optional[gs.Node]:
    """The first node of type `op` reading `tensor`. Patterns are followed forward through
    it; other readers of the tensor are the engine's business (it refuses the match)."""
    return next((n for n in consumers(tensor) if is_op(n, op)), None)


def add_reader(tensor: gs.Tensor) -> Optional[gs.Node]:
    """The first Add (or two-input Sum) reading `tensor`, as `reader`."""
    return next((n for n in consumers(tensor) if is_add(n)), None)


def first_other_consumer(
    tensors: Iterable[gs.Tensor], inside: Iterable[gs.Node], is_output: Callable[[gs.Tensor], bool]
) -> Optional[gs.Tensor]:
    """The first tensor read by something outside `inside` (or being a graph output: `is_output`)."""
    members = {id(n) for n in inside}
    for tensor in tensors:
        if is_output(tensor) or any(id(n) not in members for n in tensor.outputs):
            return tensor
    return None
