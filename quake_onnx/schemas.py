"""ONNX schemas of the com.quake ops, so onnx.checker and shape inference accept rewritten models.

ONNX Runtime never reads these (it takes the schemas from the compiled
library); they exist for the Python side: `onnx.checker.check_model(...,
full_check=True)` and `onnx.shape_inference` need to know every op they meet.
The attributes and defaults mirror docs/ops.md (the operator contract).
"""

from __future__ import annotations

import threading

import onnx
from onnx.defs import OpSchema

DOMAIN = "com.quake"
VERSION = 1
_TYPES = ["tensor(float)", "tensor(float16)"]
_lock = threading.Lock()


def _same_as_input(ctx) -> None:
    # Every com.quake op keeps X's element type and shape.
    if ctx.has_input(0):
        ctx.set_output_type(0, ctx.get_input_type(0))


def _dims(ctx, i: int):
    """Input i's dims (int, name or None each), None when absent or of unknown rank."""
    if i >= ctx.get_num_inputs() or not ctx.has_input(i):
        return None
    tensor = ctx.get_input_type(i).tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


def _attention_shape(ctx) -> None:
    # Y has Q's element type and the shape [broadcast leading dims, Sq, Dv]; the
    # head axis (-3) is Q's (K/V heads divide it, M's is 1 or it). Stated so the
    # optimizer's value_info tells ONNX Runtime what it knew of the MatMul the
    # op replaced (its MatMul+Add -> Gemm fusion after the block needs the rank).
    if not ctx.has_input(0):
        return
    elem = ctx.get_input_type(0).tensor_type.elem_type
    q, v = _dims(ctx, 0), _dims(ctx, 2)
    shape = None
    if q is not None and v is not None and len(q) >= 2 and len(v) >= 2:
        others = [d for d in (_dims(ctx, 1), v, _dims(ctx, 3)) if d is not None]
        if len(others) == 2 + (ctx.get_num_inputs() > 3 and ctx.has_input(3)):
            lead = max(len(d) for d in [q] + others) - 2
            shape = []
            for axis in range(lead, 0, -1):  # counted from the right of the leading dims
                mine = q[len(q) - 2 - axis] if axis <= len(q) - 2 else 1
                if axis == 1 or mine != 1:
                    shape.append(mine)
                    continue
                found = [o[len(o) - 2 - axis] for o in others if axis <= len(o) - 2]
                found = [d for d in found if d != 1]
                shape.append(found[0] if len(set(found)) == 1 else (1 if not found else None))
            shape += [q[-2], v[-1]]
    ctx.set_output_type(0, onnx.helper.make_tensor_type_proto(elem, shape=shape))


def _attention_schema() -> OpSchema:
    param = OpSchema.FormalParameter
    schema = OpSchema(
        "Attention",
        DOMAIN,
        VERSION,
        "softmax(scale * Q K^T + M, causal) V (FlashAttention-2 with the quake exponential)",
        inputs=[
            param("Q", "T", "[..., Sq, D]"),
            param("K", "T", "[..., Skv, D], or [..., D, Skv] with k_transposed=1"),
            param("V", "T", "[..., Skv, Dv]"),
            param(
                "M",
                "T",
                "additive mask broadcastable to [..., Sq, Skv]",
                param_option=OpSchema.FormalParameterOption.Optional,
            ),
        ],
        outputs=[param("Y", "T", "[..., Sq, Dv]")],
        type_constraints=[("T", _TYPES, "float or float16")],
        attributes=[
            OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "Multiplies Q K^T (required).", required=True),
            _attr("causal", 0, "1: key j > query i + (Skv - Sq) is masked."),
            _attr("k_transposed", 0, "1: K is given as [..., D, Skv]."),
            _order(),
            _attr(
                "precision",
                "float32",
                'Tile product precision: "float32" or "bfloat16" (Q K^T and P V in bf16, float32 accumulation).',
            ),
        ],
    )
    schema.set_type_and_shape_inference_function(_attention_shape)
    return schema


def _glu_shape(ctx) -> None:
    # With B, Y is A's shape; without it A's last dimension is cut in two: a
    # known even size halves, anything else leaves that dimension unknown.
    if not ctx.has_input(0):
        return
    out = onnx.TypeProto()
    out.CopyFrom(ctx.get_input_type(0))
    halves = not (ctx.get_num_inputs() > 1 and ctx.has_input(1))
    shape = out.tensor_type.shape if out.tensor_type.HasField("shape") else None
    if halves and shape is not None and len(shape.dim):
        last = shape.dim[-1]
        size = last.dim_value if last.HasField("dim_value") else None
        last.Clear()
        if size is not None and size % 2 == 0:
            last.dim_value = size // 2
    ctx.set_output_type(0, out)


def _glu_schema() -> OpSchema:
    param = OpSchema.FormalParameter
    schema = OpSchema(
        "Glu",
        DOMAIN,
        VERSION,
        "act(A) * B; without B, act(first half) * second half of A's last axis",
        inputs=[
            param("A", "T", "the gate's input"),
            param("B", "T", "multiplies the gate, A's shape", param_option=OpSchema.FormalParameterOption.Optional),
        ],
        outputs=[param("Y", "T", "A's shape with B; A's with the last dimension halved without")],
        type_constraints=[("T", _TYPES, "float or float16")],
        attributes=[
            OpSchema.Attribute(
                "activation", OpSchema.AttrType.STRING, "silu, gelu or gelu_tanh (required).", required=True
            ),
            _attr("alpha", 1.0, "silu only: a * sigmoid(alpha a)."),
            _order(),
        ],
    )
    schema.set_type_and_shape_inference_function(_glu_shape)
    return schema


def _attr(name: str, default, doc: str) -> OpSchema.Attribute:
    # The binding takes the default as an AttributeProto; its type becomes the attribute's type.
    return OpSchema.Attribute(name, onnx.helper.make_attribute(name, default), doc)


def _order() -> OpSchema.Attribute:
    return _attr("order", 2, "Polynomial order of the exponential core: 1, 2 or 3.")


def _axis() -> OpSchema.Attribute:
    return _attr("axis", -1, "The single axis normalised over (opset-13 semantics).")


def _schema(name: str, doc: str, attributes: list, with_bias: bool = False) -> OpSchema:
    inputs = [OpSchema.FormalParameter("X", "T")]
    if with_bias:
        inputs.append(
            OpSchema.FormalParameter(
                "B", "T", "Bias over the last axis", param_option=OpSchema.FormalParameterOption.Optional
            )
        )
    schema = OpSchema(
        name,
        DOMAIN,
        VERSION,
        doc,
        inputs=inputs,
        outputs=[OpSchema.FormalParameter("Y", "T")],
        type_constraints=[("T", _TYPES, "float or float16")],
        attributes=attributes,
    )
    schema.set_type_and_shape_inference_function(_same_as_input)
    return schema


def _schemas() -> list[OpSchema]:
    return [
        _schema("Exp", "e^x", [_order()]),
        _schema("Sigmoid", "1 / (1 + e^-x)", [_order()]),
        _schema("Silu", "x * sigmoid(alpha * x)", [_attr("alpha", 1.0, "Slope inside the sigmoid."), _order()]),
        _schema(
            "Gelu",
            "(x + b) * sigmoid(2 * sqrt(2/pi) * (u + 0.044715 u^3)), u = x + b",
            [_attr("approximate", "none", "What the replaced node computed: none or tanh."), _order()],
            with_bias=True,
        ),
        _schema(
            "Softmax",
            "Softmax over one axis, max-subtracted",
            [
                _axis(),
                _order(),
                _attr("method", "quake", "quake or exaq."),
                _attr("bits", 3, "EXAQ quantisation bits, 2..8."),
                _attr("clip", 0.0, "EXAQ clip; 0 derives it analytically."),
            ],
        ),
        _schema("LogSoftmax", "x - max - log(sum(e^(x - max)))", [_axis(), _order()]),
        _attention_schema(),
        _glu_schema(),
    ]


def register_schemas() -> None:
    """Register the com.quake schemas with onnx; calling it again is a no-op."""
    with _lock:
        for schema in _schemas():
            # onnx refuses a second registration of the same (name, domain, version).
            if not onnx.defs.has(schema.name, schema.domain):
                onnx.defs.register_schema(schema)
