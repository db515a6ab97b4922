"""The Python twin of the com.quake library: the float64 reference run inside
ONNX Runtime as onnxruntime-extensions PyOps.

A com.quake model runs unchanged in structure: `to_twin_model` swaps each
com.quake node for Cast -> PyOp (float64 reference) -> Cast, so the same graph
can be run by the library and by the reference and the outputs compared.

Limits of PyOps (onnxruntime-extensions 0.15) that shape this module:
- they live in one domain ("ai.onnx.contrib") and are registered globally,
  one signature per op_type, hence the private "QuakeTwin*" op types (and a
  separate one for Gelu with a bias and for Attention with a mask);
- tensor(float16) is not supported, so inputs are cast to float, and the
  result leaves as float64 and is cast to the node's type; for float16 the
  PyOp rounds it to half itself, as ORT's Cast from double goes through float
  and rounding twice can miss the nearest half by one unit;
- every declared attribute must be present on the node, so missing ones are
  filled in with the contract's defaults;
- float attributes reach Python printed with 6 significant digits, so the
  twin passes them as strings holding the exact float32 value instead.
Only the top-level graph is rewritten (not If/Loop bodies or functions).
"""

import copy

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from onnxruntime_extensions import PyOp, onnx_op
from onnxruntime_extensions import get_library_path as ext_lib_path

from .reference import REFERENCES

QUAKE_DOMAIN = "com.quake"
TWIN_DOMAIN = "ai.onnx.contrib"

_INT, _FLOAT, _STR = PyOp.dt_int64, PyOp.dt_float, PyOp.dt_string
_ATTRS = {
    "Exp": {"order": (_INT, 2)},
    "Sigmoid": {"order": (_INT, 2)},
    "Silu": {"alpha": (_FLOAT, 1.0), "order": (_INT, 2)},
    "Gelu": {"approximate": (_STR, "none"), "order": (_INT, 2)},
    "Softmax": {
        "axis": (_INT, -1),
        "order": (_INT, 2),
        "method": (_STR, "quake"),
        "bits": (_INT, 3),
        "clip": (_FLOAT, 0.0),
    },
    "LogSoftmax": {"axis": (_INT, -1), "order": (_INT, 2)},
    # scale is required on the node; the default here only completes the signature.
    "Attention": {
        "scale": (_FLOAT, 1.0),
        "causal": (_INT, 0),
        "k_transposed": (_INT, 0),
        "order": (_INT, 2),
        "precision": (_STR, "float32"),
    },
    # activation is required on the node; the default here only completes the signature.
    "Glu": {"activation": (_STR, "silu"), "alpha": (_FLOAT, 1.0), "order": (_INT, 2)},
}
# Input counts each op is registered with (optional inputs last).
_INPUT_COUNTS = {"Gelu": (1, 2), "Attention": (3, 4), "Glu": (1, 2)}
_SUFFIX = {("Gelu", 2): "Bias", ("Attention", 4): "Mask", ("Glu", 1): "Halves"}
_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)


def _twin_type(op_type, n_inputs, half):
    return f"QuakeTwin{op_type}" + _SUFFIX.get((op_type, n_inputs), "") + ("Half" if half else "")


def _register(op_type, n_inputs, half):
    reference = REFERENCES[op_type]

    floats = [name for name, (kind, _) in _ATTRS[op_type].items() if kind == _FLOAT]

    def body(*inputs, **attrs):
        attrs.update({name: float(attrs[name]) for name in floats})
        y = np.asarray(reference(list(inputs), attrs), dtype=np.float64)
        if half:
            with np.errstate(over="ignore"):  # overflow to inf is the rounding
                y = y.astype(np.float16).astype(np.float64)
        return y

    onnx_op(
        op_type=_twin_type(op_type, n_inputs, half),
        inputs=[PyOp.dt_float] * n_inputs,
        outputs=[PyOp.dt_double],
        attrs={name: _STR if kind == _FLOAT else kind for name, (kind, _) in _ATTRS[op_type].items()},
    )(body)


# Registration is process-wide; this module is imported once.
for _half in (False, True):
    for _op in _ATTRS:
        for _n in _INPUT_COUNTS.get(_op, (1,)):
            _register(_op, _n, _half)


def _elem_types(model):
    """Element type of every value whose type is known, following com.quake
    nodes (Y has X's type) where ONNX shape inference cannot."""
    m = copy.deepcopy(model)
    while True:
        g = onnx.shape_inference.infer_shapes(m).graph
        types = {init.name: init.data_type for init in g.initializer}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            if vi.type.tensor_type.elem_type:
                types[vi.name] = vi.type.tensor_type.elem_type
        added = False
        for node in g.node:
            if node.domain == QUAKE_DOMAIN and node.input[0] in types and node.output[0] not in types:
                m.graph.value_info.append(helper.make_tensor_value_info(node.output[0], types[node.input[0]], None))
                added = True
        if not added:
            return types


def _twin_nodes(node, elem_type):
    if node.op_type not in _ATTRS:
        raise ValueError(f"{node.name or node.op_type}: unknown com.quake op {node.op_type!r}")
    if elem_type not in _TYPES:
        raise ValueError(f"{node.name or node.op_type}: com.quake takes float or float16, got type {elem_type}")
    inputs = [name for name in node.input if name]  # "" = optional B absent
    out = node.output[0]
    casts_in = [
        helper.make_node("Cast", [name], [f"{out}__twin_in{i}"], to=TensorProto.FLOAT, name=f"{node.name}__twin_in{i}")
        for i, name in enumerate(inputs)
    ]
    attrs = {k: v for k, (_, v) in _ATTRS[node.op_type].items()}
    attrs.update({a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in attrs})
    for name, (kind, _) in _ATTRS[node.op_type].items():
        if kind == _FLOAT:
            attrs[name] = repr(float(np.float32(attrs[name])))  # exact, see above
    twin = helper.make_node(
        _twin_type(node.op_type, len(inputs), elem_type == TensorProto.FLOAT16),
        [c.output[0] for c in casts_in],
        [f"{out}__twin_f64"],
        name=node.name,
        domain=TWIN_DOMAIN,
        **attrs,
    )
    cast_out = helper.make_node("Cast", [twin.output[0]], [out], to=elem_type, name=f"{node.name}__twin_out")
    return casts_in + [twin, cast_out]


def to_twin_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every com.quake node computed by the float64
    reference (PyOps in ai.onnx.contrib); names, attributes and the rest of
    the graph are kept."""
    types = _elem_types(model)
    twin = copy.deepcopy(model)
    nodes = []
    for node in twin.graph.node:
        if node.domain == QUAKE_DOMAIN:
            nodes.extend(_twin_nodes(node, types.get(node.input[0])))
        else:
            nodes.append(node)
    del twin.graph.node[:]
    twin.graph.node.extend(nodes)

    imports = {op.domain: op.version for op in twin.opset_import}
    imports.pop(QUAKE_DOMAIN, None)
    imports.setdefault("", 13)  # for Cast
    imports[TWIN_DOMAIN] = 1
    del twin.opset_import[:]
    twin.opset_import.extend(helper.make_opsetid(d, v) for d, v in imports.items())
    return twin


def twin_session(model, sess_options=None, **kw) -> ort.InferenceSession:
    """An InferenceSession of the twin of `model` (a ModelProto or its
    bytes). Extra keywords go to InferenceSession; providers default to CPU."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load_from_string(model)
    so = sess_options or ort.SessionOptions()
    so.register_custom_ops_library(ext_lib_path())
    kw.setdefault("providers", ["CPUExecutionProvider"])
    return ort.InferenceSession(to_twin_model(model).SerializeToString(), so, **kw)
