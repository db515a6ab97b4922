"""Small models with the architectures of real exports, for `quake-onnx zoo`.

Each builder returns (model, inputs): random weights from a fixed seed, built
with onnx.helper in the node patterns torch.onnx / Hugging Face exports emit
(no torch needed). `write_zoo` saves them in the ONNX model-zoo layout,

    zoo/<name>/model.onnx
    zoo/<name>/test_data_set_0/input_<i>.pb, output_<i>.pb

the outputs being ONNX Runtime's own (graph optimizations off) on the inputs.
Hidden sizes are small so the committed files stay well under a few MB.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PRODUCER = "quake-onnx sample_models"


class Graph:
    """Nodes and initializers of one graph, with names made unique."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def _name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def weight(self, base: str, *shape: int, scale: float | None = None) -> str:
        scale = scale if scale is not None else 1.0 / np.sqrt(shape[0])
        return self.const(base, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def const(self, base: str, value) -> str:
        name = self._name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def f32(self, value: float) -> str:
        return self.const("c", np.array(value, np.float32))

    def i64(self, *values: int) -> str:
        return self.const("shape", np.array(values, np.int64))

    def op(self, op_type: str, *inputs: str, n_out: int = 1, **attrs):
        outs = [self._name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self._name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    def linear(self, x: str, d_in: int, d_out: int, bias: bool = True) -> str:
        y = self.op("MatMul", x, self.weight("w", d_in, d_out))
        if bias:
            y = self.op("Add", y, self.weight("b", d_out, scale=0.02))
        return y

    def layer_norm(self, x: str, d: int, opset: int = 17) -> str:
        gamma = self.const("ln_g", (1 + 0.1 * self.rng.standard_normal(d)).astype(np.float32))
        beta = self.const("ln_b", (0.1 * self.rng.standard_normal(d)).astype(np.float32))
        if opset >= 17:
            return self.op("LayerNormalization", x, gamma, beta, axis=-1, epsilon=1e-5)
        # What exporters emit before opset 17.
        mean = self.op("ReduceMean", x, axes=[-1])
        centred = self.op("Sub", x, mean)
        var = self.op("ReduceMean", self.op("Pow", centred, self.f32(2.0)), axes=[-1])
        std = self.op("Sqrt", self.op("Add", var, self.f32(1e-5)))
        return self.op("Add", self.op("Mul", self.op("Div", centred, std), gamma), beta)

    def erf_gelu(self, x: str, by_mul: bool = False) -> str:
        if by_mul:  # timm / HF GELUActivation: x * 0.5 * (1 + erf(x * 1/sqrt2))
            scaled = self.op("Mul", x, self.f32(1 / np.sqrt(2)))
            return self.op(
                "Mul", self.op("Mul", x, self.f32(0.5)), self.op("Add", self.op("Erf", scaled), self.f32(1.0))
            )
        # torch.onnx's nn.GELU (opset < 20): Div, Erf, Add 1, Mul x, Mul 0.5
        erf = self.op("Erf", self.op("Div", x, self.f32(np.sqrt(2))))
        return self.op("Mul", self.op("Mul", x, self.op("Add", erf, self.f32(1.0))), self.f32(0.5))

    def tanh_gelu(self, x: str) -> str:
        # GPT-2's NewGELU: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
        cube = self.op("Pow", x, self.f32(3.0))
        inner = self.op("Add", x, self.op("Mul", cube, self.f32(0.044715)))
        t = self.op("Tanh", self.op("Mul", inner, self.f32(np.sqrt(2 / np.pi))))
        return self.op("Mul", self.op("Mul", x, self.f32(0.5)), self.op("Add", t, self.f32(1.0)))

    def silu(self, x: str) -> str:
        return self.op("Mul", x, self.op("Sigmoid", x))

    def attention(
        self,
        x: str,
        hidden: int,
        heads: int,
        bias: str | None = None,
        causal: str | None = None,
        softmax_axis: int = -1,
    ) -> str:
        """Multi-head self-attention on x [B, S, H], heads split with Reshape(0, 0, h, d)."""
        d = hidden // heads
        split = self.i64(0, 0, heads, d)
        q, k, v = (self.op("Reshape", self.linear(x, hidden, hidden), split) for _ in range(3))
        q = self.op("Transpose", q, perm=[0, 2, 1, 3])
        k = self.op("Transpose", k, perm=[0, 2, 3, 1])
        v = self.op("Transpose", v, perm=[0, 2, 1, 3])
        scores = self.op("Div", self.op("MatMul", q, k), self.f32(np.sqrt(d)))
        if causal is not None:  # HF GPT-2: where(causal, scores, finfo.min)
            scores = self.op("Where", causal, scores, self.f32(np.finfo(np.float32).min))
        if bias is not None:
            scores = self.op("Add", scores, bias)
        probs = self.op("Softmax", scores, axis=softmax_axis)
        context = self.op("Transpose", self.op("MatMul", probs, v), perm=[0, 2, 1, 3])
        return self.linear(self.op("Reshape", context, self.i64(0, 0, hidden)), hidden, hidden)

    def model(self, name: str, inputs, outputs, opset: int, ir_version: int = 8) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version, producer_name=PRODUCER
        )
        onnx.checker.check_model(model, full_check=True)
        return model


def bert_encoder(seed: int = 1) -> tuple[onnx.ModelProto, dict]:
    """BERT-style: token ids + attention mask (int64, dims batch x seq), word and
    position embeddings by Gather, the mask turned into an additive bias,
    2 post-LN layers with erf-GELU, a tanh pooler and a classifier head."""
    vocab, hidden, heads, ff, layers, classes, max_pos = 512, 64, 4, 256, 2, 10, 128
    g = Graph(seed)
    words = g.op("Gather", g.weight("word_emb", vocab, hidden, scale=0.5), "input_ids")
    seq_len = g.op("Gather", g.op("Shape", "input_ids"), g.const("one", np.array(1, np.int64)), axis=0)
    positions = g.op("Range", g.const("zero", np.array(0, np.int64)), seq_len, g.const("step", np.array(1, np.int64)))
    pos = g.op("Gather", g.weight("pos_emb", max_pos, hidden, scale=0.5), positions)
    x = g.layer_norm(g.op("Add", words, pos), hidden)
    # HF: (1 - mask[:, None, None, :]) * finfo.min
    mask = g.op("Cast", g.op("Unsqueeze", "attention_mask", g.i64(1, 2)), to=TensorProto.FLOAT)
    bias = g.op("Mul", g.op("Sub", g.f32(1.0), mask), g.f32(np.finfo(np.float32).min))
    for _ in range(layers):
        x = g.layer_norm(g.op("Add", x, g.attention(x, hidden, heads, bias=bias)), hidden)
        up = g.erf_gelu(g.linear(x, hidden, ff))
        x = g.layer_norm(g.op("Add", x, g.linear(up, ff, hidden)), hidden)
    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="out_hidden"))
    cls = g.op("Gather", x, g.const("first", np.array(0, np.int64)), axis=1)
    pooled = g.op("Tanh", g.linear(cls, hidden, hidden))
    g.nodes.append(
        helper.make_node(
            "Add",
            [g.op("MatMul", pooled, g.weight("cls_w", hidden, classes)), g.weight("cls_b", classes, scale=0.02)],
            ["logits"],
            name="head",
        )
    )
    model = g.model(
        "bert_encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [
            helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
        ],
        opset=17,
    )
    rng = np.random.default_rng(seed + 100)
    batch, seq = 2, 32
    mask = np.ones((batch, seq), np.int64)
    mask[1, 20:] = 0  # a padded second sequence
    return model, {"input_ids": rng.integers(0, vocab, (batch, seq), dtype=np.int64), "attention_mask": mask}


def gpt2_decoder(seed: int = 2) -> tuple[onnx.ModelProto, dict]:
    """GPT-2-style: pre-LN decoder blocks with a causal mask (Where on a
    lower-triangular bool constant), tanh-GELU with Pow(x, 3), a final
    LayerNorm and an LM head tied to the token embedding: logits over the vocab."""
    vocab, hidden, heads, layers, seq = 256, 64, 4, 2, 32
    g = Graph(seed)
    wte = g.weight("wte", vocab, hidden, scale=0.5)
    x = g.op("Add", g.op("Gather", wte, "input_ids"), g.weight("wpe", 1, seq, hidden, scale=0.5))
    causal = g.const("causal", np.tril(np.ones((seq, seq), bool))[None, None])
    for _ in range(layers):
        x = g.op("Add", x, g.attention(g.layer_norm(x, hidden), hidden, heads, causal=causal))
        mlp = g.linear(g.tanh_gelu(g.linear(g.layer_norm(x, hidden), hidden, 4 * hidden)), 4 * hidden, hidden)
        x = g.op("Add", x, mlp)
    head = g.op("Transpose", wte, perm=[1, 0])
    g.nodes.append(helper.make_node("MatMul", [g.layer_norm(x, hidden), head], ["logits"], name="lm_head"))
    model = g.model(
        "gpt2_decoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, seq, vocab])],
        opset=17,
    )
    rng = np.random.default_rng(seed + 100)
    return model, {"input_ids": rng.integers(0, vocab, (1, seq), dtype=np.int64)}


def vit_block(seed: int = 3) -> tuple[onnx.ModelProto, dict]:
    """ViT-style: Conv patch embedding (8x8, stride 8), a class token
    concatenated in front, position embeddings, one pre-LN block with softmax
    attention and GELU (x * 1/sqrt2 form), a classifier on the class token."""
    hidden, heads, patch, image, classes = 64, 4, 8, 32, 10
    tokens = (image // patch) ** 2
    g = Graph(seed)
    w = g.weight("patch_w", hidden, 3, patch, patch, scale=1 / np.sqrt(3 * patch * patch))
    emb = g.op(
        "Conv",
        "pixel_values",
        w,
        g.weight("patch_b", hidden, scale=0.02),
        kernel_shape=[patch, patch],
        strides=[patch, patch],
    )
    seq = g.op("Transpose", g.op("Reshape", emb, g.i64(1, hidden, tokens)), perm=[0, 2, 1])
    x = g.op("Concat", g.weight("cls_token", 1, 1, hidden, scale=0.5), seq, axis=1)
    x = g.op("Add", x, g.weight("pos_emb", 1, tokens + 1, hidden, scale=0.5))
    x = g.op("Add", x, g.attention(g.layer_norm(x, hidden), hidden, heads))
    mlp = g.linear(g.erf_gelu(g.linear(g.layer_norm(x, hidden), hidden, 4 * hidden), by_mul=True), 4 * hidden, hidden)
    x = g.layer_norm(g.op("Add", x, mlp), hidden)
    cls = g.op("Gather", x, g.const("first", np.array(0, np.int64)), axis=1)
    g.nodes.append(
        helper.make_node(
            "Add",
            [g.op("MatMul", cls, g.weight("head_w", hidden, classes)), g.weight("head_b", classes, scale=0.02)],
            ["logits"],
            name="head",
        )
    )
    model = g.model(
        "vit_block",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, image, image])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        opset=17,
    )
    rng = np.random.default_rng(seed + 100)
    return model, {"pixel_values": rng.standard_normal((1, 3, image, image)).astype(np.float32)}


def efficientnet_cnn(seed: int = 4) -> tuple[onnx.ModelProto, dict]:
    """EfficientNet/YOLO-style CNN: Conv stem with SiLU, two MBConv blocks
    (expand 1x1, depthwise 3x3, squeeze-excitation gated by Sigmoid, project
    1x1, residual), a SiLU head, global pooling and a classifier."""
    classes = 10
    g = Graph(seed)

    def conv(x, c_in, c_out, k, stride=1, group=1):
        w = g.weight("conv_w", c_out, c_in // group, k, k, scale=np.sqrt(2.0 / (c_in // group * k * k)))
        return g.op(
            "Conv",
            x,
            w,
            g.weight("conv_b", c_out, scale=0.02),
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[k // 2] * 4,
            group=group,
        )

    def mbconv(x, c, expand=4):
        h = g.silu(conv(x, c, c * expand, 1))
        h = g.silu(conv(h, c * expand, c * expand, 3, group=c * expand))
        squeezed = g.silu(conv(g.op("GlobalAveragePool", h), c * expand, c // 2, 1))
        h = g.op("Mul", h, g.op("Sigmoid", conv(squeezed, c // 2, c * expand, 1)))
        return g.op("Add", x, conv(h, c * expand, c, 1))

    x = g.silu(conv("images", 3, 16, 3, stride=2))
    x = mbconv(mbconv(x, 16), 16)
    x = g.silu(conv(x, 16, 64, 1))
    pooled = g.op("Flatten", g.op("GlobalAveragePool", x), axis=1)
    g.nodes.append(
        helper.make_node(
            "Gemm",
            [pooled, g.weight("fc_w", 64, classes), g.weight("fc_b", classes, scale=0.02)],
            ["logits"],
            name="classifier",
        )
    )
    model = g.model(
        "efficientnet_cnn",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        opset=17,
    )
    rng = np.random.default_rng(seed + 100)
    return model, {"images": rng.standard_normal((1, 3, 64, 64)).astype(np.float32)}


def legacy_opset11(seed: int = 5) -> tuple[onnx.ModelProto, dict]:
    """Opset 11, as older exports: LayerNorm decomposed, attention whose
    Softmax is on the last axis, and a Softmax(axis=1) over [1, 16, 24], which
    before opset 13 normalises over the flattened 16 x 24 trailing dims."""
    hidden, heads, seq = 24, 2, 16
    g = Graph(seed)
    x = g.layer_norm("features", hidden, opset=11)
    d = hidden // heads
    split = g.i64(1, seq, heads, d)
    q, k, v = (g.op("Reshape", g.linear(x, hidden, hidden), split) for _ in range(3))
    scores = g.op(
        "Div",
        g.op("MatMul", g.op("Transpose", q, perm=[0, 2, 1, 3]), g.op("Transpose", k, perm=[0, 2, 3, 1])),
        g.f32(np.sqrt(d)),
    )
    probs = g.op("Softmax", scores, axis=3)
    context = g.op("Transpose", g.op("MatMul", probs, g.op("Transpose", v, perm=[0, 2, 1, 3])), perm=[0, 2, 1, 3])
    h = g.op("Add", x, g.linear(g.op("Reshape", context, g.i64(1, seq, hidden)), hidden, hidden))
    g.nodes.append(helper.make_node("Softmax", [h], ["heatmap"], name="flat_softmax", axis=1))
    model = g.model(
        "legacy_opset11",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, seq, hidden])],
        [helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, [1, seq, hidden])],
        opset=11,
        ir_version=6,
    )
    rng = np.random.default_rng(seed + 100)
    return model, {"features": rng.standard_normal((1, seq, hidden)).astype(np.float32)}


BUILDERS: dict[str, Callable[[], tuple[onnx.ModelProto, dict]]] = {
    "bert_encoder": bert_encoder,
    "gpt2_decoder": gpt2_decoder,
    "vit_block": vit_block,
    "efficientnet_cnn": efficientnet_cnn,
    "legacy_opset11": legacy_opset11,
}


def reference_outputs(model: onnx.ModelProto, inputs: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def write_zoo(root: Path) -> list[Path]:
    written = []
    for name, build in BUILDERS.items():
        model, inputs = build()
        folder = root / name
        shutil.rmtree(folder, ignore_errors=True)
        data = folder / "test_data_set_0"
        data.mkdir(parents=True)
        onnx.save(model, folder / "model.onnx")
        outputs = reference_outputs(model, inputs)
        for i, (key, value) in enumerate(inputs.items()):
            (data / f"input_{i}.pb").write_bytes(numpy_helper.from_array(value, key).SerializeToString())
        for i, (info, value) in enumerate(zip(model.graph.output, outputs)):
            (data / f"output_{i}.pb").write_bytes(numpy_helper.from_array(value, info.name).SerializeToString())
        written.append(folder / "model.onnx")
    return written
