"""A Llama attention layer in the node forms torch.onnx.export (TorchScript,
opset 17, dynamic batch / sequence / past) writes for Hugging Face's eager
attention (transformers 5, SmolLM2-135M exported by benchmarks/llm.py): every
size computed from Shape nodes, so onnx shape inference names none of them.

- the causal mask built at run time (transformers' eager_mask):
  q = Range(0, Sq) + past, kv = Range(0, past + Sq), Unsqueezed to
  [1, 1, Sq, 1] and [1, 1, 1, Skv], LessOrEqual(kv, q), Expand to
  [B, -1, Sq, Skv] (torch's -1 handling: Where(Equal(s, -1), 1, s)),
  Where(live, 0, float-lowest), added to the scaled scores;
- Q/K/V split into heads by Reshape(x, [B, S, -1, D]) with B and S from Shape;
- rotary embeddings from the same positions, rotate_half with Slice bounds
  computed from Shape(x)[3] / 2;
- the KV cache Concat(past, new) on axis -2 (the prefill graph: a Concat of the
  new K/V alone, what the export leaves of the cache's empty start);
- repeat_kv: Unsqueeze(axis 2) -> Expand to a target computed from Shape
  (the same -1 handling) -> Reshape to [B, Hkv * n, S, D] computed from Shape;
- softmax in float with the two Casts the export writes, MatMul with V,
  Transpose, Reshape to [B, S, -1], o_proj.

`variant` changes the mask to forms that are not causal for every size (the
rule must keep them as the op's additive mask) or that are, written
differently.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .attention_models import zoo
from .builders import run

INT64 = TensorProto.INT64
FLOAT = TensorProto.FLOAT
LOWEST = float(np.finfo(np.float32).min)
ATTENTION = "com.quake.Attention"

CAUSAL_VARIANTS = ("causal", "less", "greater", "not")  # causal for every size
ADDITIVE_VARIANTS = ("shifted", "anti", "padding", "window", "other_length", "one_row")


def llama_export(past: bool = False, variant: str = "causal", hidden: int = 48, heads: int = 6, kv_heads: int = 2):
    """(model, names of the attention block's own nodes, the name of its weights · V MatMul)."""
    g = zoo.Graph(7)
    d = hidden // heads
    n = heads // kv_heads
    block: list[str] = []

    def op(op_type, *inputs, mark=False, **attrs):
        out = g.op(op_type, *inputs, **attrs)
        if mark:
            block.append(g.nodes[-1].name)
        return out

    def scalar(value):
        return g.const("s", np.array(value, np.int64))

    def dim(t, axis):  # torch's x.shape[axis]: Shape -> Gather of a scalar index
        return op("Gather", op("Shape", t), scalar(axis), axis=0)

    def one(x):  # a scalar as a 1-element vector, for a computed shape
        return op("Unsqueeze", x, g.i64(0))

    def expand_target(*items):  # torch's expand(): -1 keeps the dimension, exported as Where(Equal(s, -1), 1, s)
        s = op("Reshape", op("Concat", *items, axis=0), g.i64(-1))
        ones = op("ConstantOfShape", op("Shape", s), value=helper.make_tensor("one", INT64, [1], [1]))
        minus = op("Mul", ones, scalar(-1))
        return op("Where", op("Equal", s, minus), ones, s)

    x = "hidden"
    q_len = dim(x, 1)
    past_len = dim("past_key", 2) if past else None

    # The mask (transformers' eager_mask), built once for every layer.
    pos = op("Range", scalar(0), op("Cast", q_len, to=INT64), scalar(1))
    q_pos = op("Add", pos, op("Cast", past_len, to=INT64)) if past else pos
    positions = q_pos  # the rotary embeddings' too
    kv_len = op("Add", past_len, q_len) if past else q_len
    if variant == "other_length":  # the query rows counted from another input's length
        q_pos = op("Range", scalar(0), op("Cast", dim("other", 0), to=INT64), scalar(1))
    if variant == "shifted":  # one key too many: j <= i + past + 1
        q_pos = op("Add", q_pos, scalar(1))
    if variant == "one_row":  # the last row's positions only, broadcast over every query
        q_pos = op("Add", op("Range", scalar(0), scalar(1), scalar(1)), op("Sub", kv_len, scalar(1)))
    kv_pos = op("Range", scalar(0), op("Cast", kv_len, to=INT64), scalar(1))
    qi = op("Unsqueeze", op("Unsqueeze", op("Unsqueeze", q_pos, g.i64(0)), g.i64(1)), g.i64(3))
    ki = op("Unsqueeze", op("Unsqueeze", op("Unsqueeze", kv_pos, g.i64(0)), g.i64(1)), g.i64(2))
    if variant in ("causal", "shifted", "other_length", "padding", "window", "one_row"):
        live = op("LessOrEqual", ki, qi)
    elif variant == "less":  # kv < q + 1
        live = op("Less", ki, op("Add", qi, scalar(1)))
    elif variant == "greater":  # q >= kv
        live = op("GreaterOrEqual", qi, ki)
    elif variant == "not":  # masked where kv > q: Where(Not(kv > q), 0, lowest)
        live = op("Not", op("Greater", ki, qi))
    elif variant == "anti":  # the keys after the query instead
        live = op("GreaterOrEqual", ki, qi)
    else:
        raise ValueError(variant)
    if variant == "padding":  # And-ed with a [B, Skv] padding mask: not provable
        pad = op("Unsqueeze", op("Cast", "attention_mask", to=TensorProto.BOOL), g.i64(1, 2))
        live = op("And", live, pad)
    if variant == "window":  # a sliding window of 4 keys
        live = op("And", live, op("Greater", ki, op("Sub", qi, scalar(4))))
    rows = g.i64(1) if variant == "one_row" else one(q_len)
    live = op("Expand", live, expand_target(one(dim(x, 0)), g.i64(-1), rows, one(kv_len)))
    mask = op("Where", live, g.f32(0.0), g.f32(LOWEST))

    # Rotary embeddings of the same positions.
    inv = (1.0 / 10000 ** (np.arange(0, d, 2) / d)).astype(np.float32)
    angle_pos = op("Cast", op("Unsqueeze", op("Unsqueeze", positions, g.i64(0)), g.i64(2)), to=FLOAT)
    freqs = op("Mul", angle_pos, g.const("inv", inv))
    emb = op("Concat", freqs, freqs, axis=-1)
    cos = op("Unsqueeze", op("Cos", emb), g.i64(1))
    sin = op("Unsqueeze", op("Sin", emb), g.i64(1))

    def rotary(t):
        half = op("Cast", op("Cast", op("Div", dim(t, 3), scalar(2)), to=INT64), to=INT64)
        first = op("Slice", t, g.i64(0), one(half), g.i64(3), g.i64(1))
        second = op("Slice", t, one(half), g.i64(np.iinfo(np.int64).max), g.i64(3), g.i64(1))
        rotated = op("Concat", op("Neg", second), first, axis=-1)
        return op("Add", op("Mul", t, cos), op("Mul", rotated, sin))

    def split(t, size):
        shape = op("Concat", one(dim(x, 0)), one(dim(x, 1)), g.i64(-1), g.i64(d), axis=0)
        return op("Transpose", op("Reshape", g.linear(t, hidden, size, bias=False), shape), perm=[0, 2, 1, 3])

    q = rotary(split(x, hidden))
    k = rotary(split(x, kv_heads * d))
    v = split(x, kv_heads * d)
    if past:
        g.nodes.append(helper.make_node("Concat", ["past_key", k], ["present_key"], name="cache_k", axis=-2))
        g.nodes.append(helper.make_node("Concat", ["past_value", v], ["present_value"], name="cache_v", axis=-2))
    else:
        g.nodes.append(helper.make_node("Concat", [k], ["present_key"], name="cache_k", axis=-2))
        g.nodes.append(helper.make_node("Concat", [v], ["present_value"], name="cache_v", axis=-2))

    def repeat_kv(t):
        b, h, s, e = (dim(t, i) for i in range(4))
        u = op("Unsqueeze", t, g.i64(2))
        spread = op("Expand", u, expand_target(one(b), one(h), g.i64(n), one(s), one(e)))
        heads_total = op("Mul", h, scalar(n))
        return op("Reshape", spread, op("Concat", one(b), one(heads_total), one(s), one(e), axis=0))

    k_rep, v_rep = repeat_kv("present_key"), repeat_kv("present_value")
    kt = op("Transpose", k_rep, perm=[0, 1, 3, 2])
    scores = op("Mul", op("MatMul", q, kt, mark=True), g.f32(d**-0.5), mark=True)
    scores = op("Add", scores, mask, mark=True)
    probs = op("Cast", op("Cast", op("Softmax", scores, axis=-1, mark=True), to=FLOAT, mark=True), to=FLOAT, mark=True)
    context = op("MatMul", probs, v_rep, mark=True)
    pv = block[-1]
    merged = op(
        "Reshape",
        op("Transpose", context, perm=[0, 2, 1, 3]),
        op("Concat", one(dim(x, 0)), one(dim(x, 1)), g.i64(-1), axis=0),
    )
    out = g.linear(merged, hidden, hidden, bias=False)
    g.nodes.append(helper.make_node("Identity", [out], ["out"], name="out"))

    inputs = [helper.make_tensor_value_info("hidden", FLOAT, ["batch", "seq", hidden])]
    total = "seq"
    if past:
        inputs += [
            helper.make_tensor_value_info(name, FLOAT, ["batch", kv_heads, "past", d])
            for name in ("past_key", "past_value")
        ]
        total = "total"
    if variant == "padding":
        inputs.append(helper.make_tensor_value_info("attention_mask", INT64, ["batch", total]))
    if variant == "other_length":
        inputs.append(helper.make_tensor_value_info("other", FLOAT, ["other_len"]))
    outputs = [
        helper.make_tensor_value_info("out", FLOAT, ["batch", "seq", hidden]),
        helper.make_tensor_value_info("present_key", FLOAT, ["batch", kv_heads, total, d]),
        helper.make_tensor_value_info("present_value", FLOAT, ["batch", kv_heads, total, d]),
    ]
    model = g.model(f"llama_export_{variant}", inputs, outputs, opset=17)
    return model, block, pv


def feeds(model, seq: int, past: int = 0, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    names = {i.name for i in model.graph.input}
    hidden = next(i for i in model.graph.input if i.name == "hidden").type.tensor_type.shape.dim[2].dim_value
    kv = next((i for i in model.graph.input if i.name == "past_key"), None)
    out = {"hidden": rng.standard_normal((1, seq, hidden)).astype(np.float32)}
    if kv is not None:
        dims = kv.type.tensor_type.shape.dim
        shape = (1, dims[1].dim_value, past, dims[3].dim_value)
        out["past_key"] = rng.standard_normal(shape).astype(np.float32)
        out["past_value"] = rng.standard_normal(shape).astype(np.float32)
    if "attention_mask" in names:
        out["attention_mask"] = np.ones((1, past + seq), np.int64)
    if "other" in names:
        out["other"] = np.zeros(seq, np.float32)
    return out


def expected_ops(model: onnx.ModelProto, block: list[str], pv: str, causal: bool) -> list[str]:
    """The node types after the fusion, worked out independently of the rule: the block's
    nodes out, com.quake Attention where its weights · V MatMul was, reading Q, the cached
    K/V (and the mask when it is not causal), then every node nothing reads any more out."""
    nodes = {n.name: n for n in model.graph.node}
    qk, add = nodes[block[0]], nodes[block[2]]
    fused = helper.make_node(
        "Attention",
        [qk.input[0], "present_key", "present_value"] + ([] if causal else [add.input[1]]),
        [nodes[pv].output[0]],
        domain="com.quake",
    )
    kept = [fused if n.name == pv else n for n in model.graph.node if n.name not in block[:-1]]
    outputs = {o.name for o in model.graph.output}
    while True:
        read = {i for n in kept for i in n.input} | outputs
        alive = [n for n in kept if any(o in read for o in n.output)]
        if len(alive) == len(kept):
            break
        kept = alive
    return [ATTENTION if n.domain == "com.quake" else n.op_type for n in kept]


def attrs(model: onnx.ModelProto) -> dict:
    node = next(n for n in model.graph.node if n.op_type == "Attention")
    return {a.name: helper.get_attribute_value(a) for a in node.attribute} | {"inputs": list(node.input)}


def bound(model, f) -> float:
    # The op's 2e-3 x max|V| (order 2), carried through o_proj: relative to the output's size.
    return 5e-3 * float(np.abs(run(model, f)[0]).max())


def behind_deep_stream(model: onnx.ModelProto, steps: int) -> onnx.ModelProto:
    """The layer behind `steps` residual steps h = h + 0.01 h on its input (standing for a
    decoder's earlier layers: the layer's sizes are then hundreds of nodes from the inputs)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        node.input[:] = [f"stream_{steps}" if i == "hidden" else i for i in node.input]
    out.graph.initializer.append(onnx.numpy_helper.from_array(np.array(0.01, np.float32), "stream_c"))
    stream = []
    for i in range(steps):
        h = "hidden" if i == 0 else f"stream_{i}"
        stream.append(helper.make_node("Mul", [h, "stream_c"], [f"stream_m{i}"], name=f"stream_m{i}"))
        stream.append(helper.make_node("Add", [h, f"stream_m{i}"], [f"stream_{i + 1}"], name=f"stream_a{i}"))
    nodes = stream + list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def int8_matmuls(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every MatMul by a stored weight as onnxruntime.quantization.quantize_dynamic (MatMul only,
    int8 weights; benchmarks/models.py's int8 copy) writes it: DynamicQuantizeLinear of the
    activations, MatMulInteger with the int8 weight and the zero points, Cast to float, Mul by
    the product of the two scales. (Built here: the quantizer runs onnx's reference evaluator,
    which refuses the com.quake schemas the tests register.)"""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    nodes, quantized = [], set()
    for node in out.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights:
            nodes.append(node)
            continue
        a, w, y, base = node.input[0], node.input[1], node.output[0], node.name
        scale = float(np.abs(weights[w]).max()) / 127 or 1.0
        q = np.clip(np.round(weights[w] / scale), -127, 127).astype(np.int8)
        out.graph.initializer.extend(
            [
                onnx.numpy_helper.from_array(q, f"{w}_quantized"),
                onnx.numpy_helper.from_array(np.array(scale, np.float32), f"{w}_scale"),
                onnx.numpy_helper.from_array(np.array(0, np.int8), f"{w}_zero_point"),
            ]
        )
        if a not in quantized:  # once per activation, shared by the projections reading it (Q, K, V)
            quantized.add(a)
            nodes.append(
                helper.make_node(
                    "DynamicQuantizeLinear", [a], [f"{a}_quantized", f"{a}_scale", f"{a}_zero_point"], name=f"{a}_dq"
                )
            )
        nodes += [
            helper.make_node("Mul", [f"{a}_scale", f"{w}_scale"], [f"{base}_scales"], name=f"{base}_scales_mul"),
            helper.make_node(
                "MatMulInteger",
                [f"{a}_quantized", f"{w}_quantized", f"{a}_zero_point", f"{w}_zero_point"],
                [f"{y}_int"],
                name=f"{base}_quant",
            ),
            helper.make_node("Cast", [f"{y}_int"], [f"{y}_cast"], name=f"{base}_cast", to=FLOAT),
            helper.make_node("Mul", [f"{y}_cast", f"{base}_scales"], [y], name=f"{base}_scale_mul"),
        ]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out
