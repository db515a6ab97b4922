"""Builds the bundled sample models (random weights, fixed seed).

    python sample_models/build.py

encoder_block.onnx: one transformer encoder block (multi-head attention with
an additive mask, a GELU MLP and a SiLU-gated output) in standard ONNX ops,
opset 20. encoder_block.quake.onnx: the same block with its Softmax, Gelu
(bias folded in) and x*Sigmoid(x) as com.quake nodes, the form the rewriter
produces. Both read X [1, 64, 128] and MASK [1, 1, 64, 64] (additive: 0 or -inf).

zoo/<name>/: the models of zoo_models.py (BERT-style encoder, GPT-2-style
decoder, ViT-style block, EfficientNet-style CNN, an opset-11 model) in the
ONNX model-zoo layout, inputs and expected outputs beside each, for
`quake-onnx check` and `quake-onnx zoo`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
SEQ, HIDDEN, HEADS, FF = 64, 128, 4, 512


def encoder_block(quake: bool, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = []

    def weight(name, *shape, scale=None):
        scale = scale or 1.0 / np.sqrt(shape[0])
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    head_dim = HIDDEN // HEADS
    nodes = []

    def node(op, ins, outs, domain="", **attrs):
        nodes.append(helper.make_node(op, ins, outs, name=f"{op.lower()}_{len(nodes)}", domain=domain, **attrs))
        return outs[0]

    split_shape = const("split_shape", np.array([1, SEQ, HEADS, head_dim], np.int64))
    merge_shape = const("merge_shape", np.array([1, SEQ, HIDDEN], np.int64))
    heads = {}
    for name in ("q", "k", "v"):
        projected = node("MatMul", ["X", weight(f"w_{name}", HIDDEN, HIDDEN)], [f"{name}_proj"])
        split = node("Reshape", [projected, split_shape], [f"{name}_split"])
        perm = [0, 2, 3, 1] if name == "k" else [0, 2, 1, 3]
        heads[name] = node("Transpose", [split], [f"{name}_heads"], perm=perm)
    scores = node("MatMul", [heads["q"], heads["k"]], ["scores"])
    scaled = node("Div", [scores, const("sqrt_d", np.array(np.sqrt(head_dim), np.float32))], ["scaled"])
    masked = node("Add", [scaled, "MASK"], ["masked"])
    if quake:
        probs = node("Softmax", [masked], ["probs"], domain="com.quake", axis=-1, order=2)
    else:
        probs = node("Softmax", [masked], ["probs"], axis=-1)
    context = node("MatMul", [probs, heads["v"]], ["context"])
    merged = node("Reshape", [node("Transpose", [context], ["context_t"], perm=[0, 2, 1, 3]), merge_shape], ["merged"])
    attn = node("MatMul", [merged, weight("w_o", HIDDEN, HIDDEN)], ["attn"])
    hidden = node("Add", ["X", attn], ["hidden"])

    up = node("MatMul", [hidden, weight("w_up", HIDDEN, FF)], ["up"])
    b_up = const("b_up", (rng.standard_normal(FF) * 0.1).astype(np.float32))
    if quake:
        act = node("Gelu", [up, b_up], ["act"], domain="com.quake", approximate="none", order=2)
    else:
        act = node("Gelu", [node("Add", [up, b_up], ["up_b"])], ["act"], approximate="none")
    down = node("MatMul", [act, weight("w_down", FF, HIDDEN)], ["down"])
    if quake:
        gated = node("Silu", [down], ["gated"], domain="com.quake", alpha=1.0, order=2)
    else:
        gated = node("Mul", [down, node("Sigmoid", [down], ["gate"])], ["gated"])
    node("Add", [hidden, gated], ["Y"])

    graph = helper.make_graph(
        nodes,
        "encoder_block",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, SEQ, HIDDEN]),
            helper.make_tensor_value_info("MASK", TensorProto.FLOAT, [1, 1, SEQ, SEQ]),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, SEQ, HIDDEN])],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", 20)] + ([helper.make_opsetid("com.quake", 1)] if quake else [])
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10, producer_name="quake-onnx sample_models")
    return model


def main() -> None:
    for quake, name in ((False, "encoder_block.onnx"), (True, "encoder_block.quake.onnx")):
        model = encoder_block(quake)
        if not quake:
            onnx.checker.check_model(model, full_check=True)
        onnx.save(model, HERE / name)
        print(f"wrote {HERE / name}")
    sys.path.insert(0, str(HERE))
    from zoo_models import write_zoo

    for path in write_zoo(HERE / "zoo"):
        print(f"wrote {path} and its test_data_set_0")


if __name__ == "__main__":
    main()
