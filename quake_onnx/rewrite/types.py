"""Element types and shapes of every tensor, from onnx shape inference on a copy of the model."""

from __future__ import annotations

from typing import Iterable, Optional, Union

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto

Dim = Union[int, str, None]
SUPPORTED = (TensorProto.FLOAT, TensorProto.FLOAT16)


def type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type).lower()


class TypeTable:
    """Types by tensor name. Names are unique across a model and its subgraphs (ONNX
    forbids shadowing), so one table serves every graph."""

    def __init__(self, model: onnx.ModelProto, hints: Iterable[onnx.ValueInfoProto] = ()):
        """hints: types known from elsewhere (ONNX Runtime's, for tensors after
        ops onnx cannot infer, such as another library's custom ops), used
        for the tensors inference leaves untyped."""
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except Exception:  # e.g. > 2 GB protobufs, or an op whose inference raises: use what the model states
            inferred = model
        self._elem: dict[str, int] = {}
        self._shape: dict[str, Optional[list[Dim]]] = {}
        self._collect(inferred.graph)
        for info in hints:
            if info.name not in self._elem:
                self._add(info)

    def _collect(self, graph: onnx.GraphProto) -> None:
        for info in list(graph.input) + list(graph.output) + list(graph.value_info):
            self._add(info)
        for init in graph.initializer:
            self._elem[init.name] = init.data_type
            self._shape[init.name] = list(init.dims)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    self._collect(attr.g)
                for sub in attr.graphs:
                    self._collect(sub)

    def _add(self, info: onnx.ValueInfoProto) -> None:
        tensor_type = info.type.tensor_type if info.type.HasField("tensor_type") else None
        if tensor_type is None or not tensor_type.elem_type:
            return
        self._elem[info.name] = tensor_type.elem_type
        if tensor_type.HasField("shape"):
            self._shape[info.name] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
            ]

    def elem_type(self, tensor: gs.Tensor) -> Optional[int]:
        if isinstance(tensor, gs.Constant):
            return _constant_elem_type(tensor)
        if tensor.name in self._elem:
            return self._elem[tensor.name]
        if tensor.dtype is not None:  # gs read it from the model's own value_info
            try:
                return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
            except TypeError:
                return None
        return None

    def shape(self, tensor: gs.Tensor) -> Optional[list[Dim]]:
        if isinstance(tensor, gs.Constant):  # from the proto's dims: a weight's bytes are never read for it
            return [int(d) for d in tensor.shape]
        if tensor.name in self._shape:
            return self._shape[tensor.name]
        return list(tensor.shape) if tensor.shape is not None else None


def _constant_elem_type(tensor: gs.Constant) -> Optional[int]:
    """The ONNX element type of a constant, from its proto's data_type where it has
    one: reading the values would load a weight kept outside the model (external
    data, or set aside by tune) only to learn its type."""
    dtype = tensor.dtype
    if isinstance(dtype, int):  # a type numpy lacks (bfloat16, float8): gs gives the ONNX one
        return dtype
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except TypeError:
        return None
