"""Model fragments in the node patterns torch.onnx / Hugging Face exports emit,
for the attention fusion counts and ONNX Runtime's fusions around them:
BERT (post-LN, the additive padding mask ORT's own attention fusion knows),
GPT-2 and ViT (the zoo samples), a Whisper encoder layer (scale on Q and K),
a Llama decoder layer (GQA repeat_kv, additive causal bias, a KV cache), and the
same in the forms of a real torch.onnx export with sizes computed at run time
(decoder_export.py), prefill and decode.
Each builder returns (model, feeds, attention blocks it holds)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

_spec = importlib.util.spec_from_file_location(
    "zoo_models", Path(__file__).resolve().parents[2] / "sample_models" / "zoo_models.py"
)
zoo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zoo)


def bert_post_ln(seq: int = 16, hidden: int = 32, heads: int = 4, ff: int = 64, layers: int = 2):
    """BERT post-LN layers as ORT's AttentionFusion expects them: Q/K/V MatMul + bias from the
    LayerNorm output, K transposed to [B, H, D, S], Div by sqrt(D), the mask
    (1 - m[:, None, None, :]) * -10000 added, the residual from the same LayerNorm."""
    g = zoo.Graph(11)
    d = hidden // heads
    x = g.layer_norm("input", hidden)
    u = g.op("Unsqueeze", g.op("Unsqueeze", "mask", g.i64(1)), g.i64(2))
    bias = g.op("Mul", g.op("Sub", g.f32(1.0), u), g.f32(-10000.0))
    for _ in range(layers):
        split = g.i64(0, 0, heads, d)
        q, k, v = (g.op("Reshape", g.linear(x, hidden, hidden), split) for _ in range(3))
        q = g.op("Transpose", q, perm=[0, 2, 1, 3])
        k = g.op("Transpose", k, perm=[0, 2, 3, 1])
        v = g.op("Transpose", v, perm=[0, 2, 1, 3])
        scores = g.op("Add", g.op("Div", g.op("MatMul", q, k), g.f32(np.sqrt(d))), bias)
        context = g.op("Transpose", g.op("MatMul", g.op("Softmax", scores, axis=3), v), perm=[0, 2, 1, 3])
        attn = g.linear(g.op("Reshape", context, g.i64(0, 0, hidden)), hidden, hidden)
        x = g.layer_norm(g.op("Add", attn, x), hidden)
        x = g.layer_norm(g.op("Add", g.linear(g.erf_gelu(g.linear(x, hidden, ff)), ff, hidden), x), hidden)
    g.nodes.append(helper.make_node("Identity", [x], ["output"], name="out"))
    model = g.model(
        "bert_post_ln",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, seq, hidden]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, [2, seq]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [2, seq, hidden])],
        opset=17,
    )
    rng = np.random.default_rng(0)
    mask = np.ones((2, seq), np.float32)
    mask[1, seq - 5 :] = 0
    return model, {"input": rng.standard_normal((2, seq, hidden)).astype(np.float32), "mask": mask}, layers


def whisper_encoder(seq: int = 24, hidden: int = 32, heads: int = 4):
    """Whisper's encoder attention: q_proj(x) * d^-0.25 and k_proj(x) * d^-0.25 (the
    torch SDPA decomposition scales both), no mask, pre-LN, erf-GELU MLP."""
    g = zoo.Graph(12)
    d = hidden // heads
    h = g.layer_norm("input_features", hidden)
    split = g.i64(0, 0, heads, d)
    root = g.f32(d**-0.25)
    q = g.op("Transpose", g.op("Reshape", g.linear(h, hidden, hidden), split), perm=[0, 2, 1, 3])
    k = g.op("Transpose", g.op("Reshape", g.linear(h, hidden, hidden, bias=False), split), perm=[0, 2, 1, 3])
    v = g.op("Transpose", g.op("Reshape", g.linear(h, hidden, hidden), split), perm=[0, 2, 1, 3])
    kt = g.op("Mul", g.op("Transpose", k, perm=[0, 1, 3, 2]), root)
    probs = g.op("Softmax", g.op("MatMul", g.op("Mul", q, root), kt), axis=-1)
    context = g.op("Reshape", g.op("Transpose", g.op("MatMul", probs, v), perm=[0, 2, 1, 3]), g.i64(0, 0, hidden))
    x = g.op("Add", "input_features", g.linear(context, hidden, hidden))
    x = g.op("Add", x, g.linear(g.erf_gelu(g.linear(g.layer_norm(x, hidden), hidden, 4 * hidden)), 4 * hidden, hidden))
    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="out"))
    model = g.model(
        "whisper_encoder",
        [helper.make_tensor_value_info("input_features", TensorProto.FLOAT, [1, seq, hidden])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [1, seq, hidden])],
        opset=17,
    )
    rng = np.random.default_rng(1)
    return model, {"input_features": rng.standard_normal((1, seq, hidden)).astype(np.float32)}, 1


def llama_decoder(seq: int = 6, past: int = 10, hidden: int = 48, heads: int = 6, kv_heads: int = 2):
    """A Llama decoder layer with a KV cache: RMSNorm, q/k/v projections without bias,
    rotary embeddings on Q and the new K, K/V = Concat(past, new), repeat_kv as Unsqueeze -> Expand -> Reshape,
    scores * d^-0.5
    plus the additive causal bias [1, 1, Sq, Skv] (0 / float-lowest, shifted by the past),
    softmax in float, SiLU-gated MLP. Outputs the hidden state and the present K/V."""
    g = zoo.Graph(13)
    d = hidden // heads
    total = past + seq
    n = heads // kv_heads

    def rms_norm(x):
        ms = g.op("ReduceMean", g.op("Pow", x, g.f32(2.0)), axes=[-1])
        return g.op(
            "Mul",
            g.op("Mul", x, g.op("Reciprocal", g.op("Sqrt", g.op("Add", ms, g.f32(1e-6))))),
            g.weight("rms", hidden, scale=0.1),
        )

    def heads_of(x, count):
        return g.op("Transpose", g.op("Reshape", x, g.i64(0, 0, count, d)), perm=[0, 2, 1, 3])

    def repeat_kv(x, rows, cols):
        u = g.op("Unsqueeze", x, g.i64(2))
        e = g.op("Expand", u, g.i64(1, kv_heads, n, rows, cols))
        return g.op("Reshape", e, g.i64(1, heads, rows, cols))

    # Rotary embeddings of positions past .. past + seq - 1, left as they are before the attention.
    inv = 1.0 / (10000 ** (np.arange(0, d, 2) / d))
    angles = np.outer(np.arange(past, past + seq), inv)
    angles = np.concatenate([angles, angles], axis=-1)[None, None].astype(np.float32)
    cos, sin = g.const("rope_cos", np.cos(angles)), g.const("rope_sin", np.sin(angles))

    def rotary(x):
        first = g.op("Slice", x, g.i64(0), g.i64(d // 2), g.i64(-1))
        second = g.op("Slice", x, g.i64(d // 2), g.i64(d), g.i64(-1))
        rotated = g.op("Concat", g.op("Neg", second), first, axis=-1)
        return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rotated, sin))

    h = rms_norm("hidden")
    q = rotary(heads_of(g.linear(h, hidden, hidden, bias=False), heads))
    k_new = rotary(heads_of(g.linear(h, hidden, kv_heads * d, bias=False), kv_heads))
    v_new = heads_of(g.linear(h, hidden, kv_heads * d, bias=False), kv_heads)
    g.nodes.append(helper.make_node("Concat", ["past_key", k_new], ["present_key"], name="cache_k", axis=2))
    g.nodes.append(helper.make_node("Concat", ["past_value", v_new], ["present_value"], name="cache_v", axis=2))
    k = repeat_kv("present_key", total, d)
    v = repeat_kv("present_value", total, d)
    scores = g.op("Mul", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), g.f32(d**-0.5))
    lowest = np.finfo(np.float32).min
    causal = np.where(np.arange(total)[None, :] <= np.arange(seq)[:, None] + past, 0.0, lowest)
    scores = g.op("Add", scores, g.const("causal_mask", causal[None, None].astype(np.float32)))
    probs = g.op("Cast", g.op("Softmax", g.op("Cast", scores, to=TensorProto.FLOAT), axis=-1), to=TensorProto.FLOAT)
    context = g.op("Reshape", g.op("Transpose", g.op("MatMul", probs, v), perm=[0, 2, 1, 3]), g.i64(0, 0, hidden))
    x = g.op("Add", "hidden", g.linear(context, hidden, hidden, bias=False))
    m = rms_norm(x)
    gate = g.linear(m, hidden, 2 * hidden, bias=False)
    act = g.op("Mul", gate, g.op("Sigmoid", gate))
    x = g.op(
        "Add",
        x,
        g.linear(g.op("Mul", act, g.linear(m, hidden, 2 * hidden, bias=False)), 2 * hidden, hidden, bias=False),
    )
    g.nodes.append(helper.make_node("Identity", [x], ["out_hidden"], name="out"))
    f = TensorProto.FLOAT
    model = g.model(
        "llama_decoder",
        [
            helper.make_tensor_value_info("hidden", f, [1, seq, hidden]),
            helper.make_tensor_value_info("past_key", f, [1, kv_heads, past, d]),
            helper.make_tensor_value_info("past_value", f, [1, kv_heads, past, d]),
        ],
        [
            helper.make_tensor_value_info("out_hidden", f, [1, seq, hidden]),
            helper.make_tensor_value_info("present_key", f, [1, kv_heads, total, d]),
            helper.make_tensor_value_info("present_value", f, [1, kv_heads, total, d]),
        ],
        opset=17,
    )
    rng = np.random.default_rng(2)
    feeds = {
        "hidden": rng.standard_normal((1, seq, hidden)).astype(np.float32),
        "past_key": rng.standard_normal((1, kv_heads, past, d)).astype(np.float32),
        "past_value": rng.standard_normal((1, kv_heads, past, d)).astype(np.float32),
    }
    return model, feeds, 1


def gpt2():
    model, feeds = zoo.gpt2_decoder()
    return model, feeds, 2


def vit():
    model, feeds = zoo.vit_block()
    return model, feeds, 1


def bert_zoo():
    model, feeds = zoo.bert_encoder()
    return model, feeds, 2


def llama_export_prefill():
    from .decoder_export import feeds, llama_export

    model = llama_export(past=False)[0]
    return model, feeds(model, 9), 1


def llama_export_decode():
    from .decoder_export import feeds, llama_export

    model = llama_export(past=True)[0]
    return model, feeds(model, 1, 12), 1


FRAGMENTS = {
    "bert_post_ln": bert_post_ln,
    "bert_zoo": bert_zoo,
    "gpt2": gpt2,
    "whisper_encoder": whisper_encoder,
    "llama_decoder": llama_decoder,
    "llama_export_prefill": llama_export_prefill,
    "llama_export_decode": llama_export_decode,
    "vit": vit,
}
