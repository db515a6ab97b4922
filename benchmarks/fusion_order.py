"""Which goes first: ONNX Runtime's graph fusions or the com.quake rewrite?

    python benchmarks/fusion_order.py [--runs 300] [--rounds 5] [--keep DIR]

Builds a BERT-like encoder layer (erf-GELU decomposed as PyTorch exports it,
LayerNormalization, additive attention mask from an int mask) and a small
EfficientNet-like CNN (Conv + x*Sigmoid(x) SiLU, squeeze-excitation Sigmoid),
then times, under ORT_ENABLE_ALL with the com.quake library on 1 thread:

  original      the model as built
  original -SLN the same with ORT's SkipLayerNormFusion disabled (a control)
  ort-first     quake_onnx.optimize(ort_fusions=True)   (the default)
  rewrite-first quake_onnx.optimize(ort_fusions=False)  (--no-ort-fusions)
  ort-all       quake_onnx.optimize(ort_level="all")    (--ort-level all: ORT's NCHWc
                layout fixed offline, then the blocked activations replaced)

Runs are interleaved in rounds so drift on a shared machine hits every
variant alike; the median over all runs is reported.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import quake_onnx


class Builder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, array) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name: str, *shape, scale=None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
        scale = scale or 1.0 / np.sqrt(fan_in)
        return self.const(name, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=f"{op}_{len(self.nodes)}", **attrs))
        return name

    def model(self, name, inputs, outputs, opset) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
        onnx.checker.check_model(model, full_check=True)
        return model


def bert_layer(seq=128, hidden=256, heads=4, ff=1024) -> tuple[onnx.ModelProto, dict]:
    b = Builder(0)
    d = hidden // heads
    f32 = lambda v: np.array(v, np.float32)  # noqa: E731
    # BERT's extended mask: (1 - mask[:, None, None, :]) * -10000
    m = b.node("Unsqueeze", ["mask", b.const("ax12", np.array([1, 2], np.int64))], "mask4")
    m = b.node("Cast", [m], "maskf", to=TensorProto.FLOAT)
    m = b.node("Sub", [b.const("one", f32(1.0)), m], "inv")
    bias_mask = b.node("Mul", [m, b.const("neg", f32(-10000.0))], "mask_bias")

    def linear(x, name, n_in, n_out):
        y = b.node("MatMul", [x, b.weight(f"{name}_w", n_in, n_out)], f"{name}_mm")
        return b.node("Add", [y, b.const(f"{name}_b", (b.rng.standard_normal(n_out) * 0.02).astype(np.float32))], name)

    def layer_norm(x, name):
        g = b.const(f"{name}_g", np.ones(hidden, np.float32))
        beta = b.const(f"{name}_beta", np.zeros(hidden, np.float32))
        return b.node("LayerNormalization", [x, g, beta], name, axis=-1, epsilon=1e-12)

    split = b.const("split", np.array([0, 0, heads, d], np.int64))
    merge = b.const("merge", np.array([0, 0, hidden], np.int64))
    heads_of = {}
    for n in ("q", "k", "v"):
        r = b.node("Reshape", [linear("X", n, hidden, hidden), split], f"{n}_r")
        heads_of[n] = b.node("Transpose", [r], f"{n}_t", perm=[0, 2, 3, 1] if n == "k" else [0, 2, 1, 3])
    s = b.node("MatMul", [heads_of["q"], heads_of["k"]], "scores")
    s = b.node("Div", [s, b.const("sqrt_d", f32(np.sqrt(d)))], "scaled")
    s = b.node("Add", [s, bias_mask], "masked")
    p = b.node("Softmax", [s], "probs", axis=-1)
    c = b.node("MatMul", [p, heads_of["v"]], "ctx")
    c = b.node("Reshape", [b.node("Transpose", [c], "ctx_t", perm=[0, 2, 1, 3]), merge], "ctx_m")
    h = layer_norm(b.node("Add", [linear(c, "o", hidden, hidden), "X"], "res1"), "ln1")
    u = linear(h, "up", hidden, ff)
    # erf-GELU the way torch.onnx exports nn.GELU(): x * 0.5 * (1 + erf(x / sqrt 2))
    e = b.node("Erf", [b.node("Div", [u, b.const("sqrt2", f32(np.sqrt(2.0)))], "u_s")], "erf")
    g = b.node("Mul", [b.node("Mul", [u, b.node("Add", [e, "one"], "erf1")], "ux"), b.const("half", f32(0.5))], "gelu")
    y = b.node("Add", [linear(g, "down", ff, hidden), h], "res2")
    layer_norm(y, "Y")
    model = b.model(
        "bert_layer",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, seq, hidden]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, [1, seq]),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, seq, hidden])],
        opset=17,
    )
    rng = np.random.default_rng(1)
    mask = np.ones((1, seq), np.int64)
    mask[:, seq * 3 // 4 :] = 0
    return model, {"X": rng.standard_normal((1, seq, hidden)).astype(np.float32), "mask": mask}


def cnn(size=64, width=32, blocks=3) -> tuple[onnx.ModelProto, dict]:
    b = Builder(0)

    def conv(x, name, c_in, c_out, k=1, stride=1, group=1):
        w = b.weight(f"{name}_w", c_out, c_in // group, k, k)
        bias = b.const(f"{name}_b", np.zeros(c_out, np.float32))
        return b.node(
            "Conv", [x, w, bias], name, kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=group
        )

    def silu(x, name):  # what torch.onnx writes for nn.SiLU below opset 24
        return b.node("Mul", [x, b.node("Sigmoid", [x], f"{name}_sig")], name)

    x = silu(conv("X", "stem", 3, width, k=3, stride=2), "stem_act")
    for i in range(blocks):
        exp = width * 4
        h = silu(conv(x, f"b{i}_expand", width, exp), f"b{i}_act1")
        h = silu(conv(h, f"b{i}_dw", exp, exp, k=3, group=exp), f"b{i}_act2")
        # squeeze-excitation: pool, reduce, SiLU, expand, Sigmoid gate
        s = b.node("GlobalAveragePool", [h], f"b{i}_pool")
        s = silu(conv(s, f"b{i}_se1", exp, width // 4), f"b{i}_se_act")
        s = b.node("Sigmoid", [conv(s, f"b{i}_se2", width // 4, exp)], f"b{i}_gate")
        h = b.node("Mul", [h, s], f"b{i}_se")
        x = b.node("Add", [conv(h, f"b{i}_proj", exp, width), x], f"b{i}_out")
    b.node("Identity", [x], "Y")
    model = b.model(
        "cnn",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, width, size // 2, size // 2])],
        opset=17,
    )
    return model, {"X": np.random.default_rng(1).standard_normal((1, 3, size, size)).astype(np.float32)}


def session(path: Path, disabled=()) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return quake_onnx.InferenceSession(str(path), so, disabled_optimizers=list(disabled))


_SHOWN = (
    "Softmax",
    "Gelu",
    "Sigmoid",
    "Silu",
    "Erf",
    "Attention",
    "LayerNorm",
    "FusedConv",
    "Reorder",
    "Gemm",
    "MatMul",
)


def ops_of(path: Path) -> str:
    m = onnx.load(str(path), load_external_data=False)
    c = collections.Counter(f"{n.domain.split('.')[-1] + '.' if n.domain else ''}{n.op_type}" for n in m.graph.node)
    return ", ".join(f"{k}x{v}" if v > 1 else k for k, v in sorted(c.items()) if any(s in k for s in _SHOWN))


def runtime_graph(path: Path, folder: Path) -> str:
    """The ops ORT actually runs after its ENABLE_ALL fusions (what explains the times)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # the NCHWc "hardware specific" warning is expected here
    so.optimized_model_filepath = str(folder / f"{path.stem}.runtime.onnx")
    quake_onnx.InferenceSession(str(path), so)
    return ops_of(Path(so.optimized_model_filepath))


def measure(name, model, feeds, runs, rounds, keep: Path):
    (keep / "runtime").mkdir(parents=True, exist_ok=True)
    paths = {"original": keep / f"{name}.onnx"}
    onnx.save(model, str(paths["original"]))
    reports = {}
    for variant, fusions, level in (
        ("ort-first", True, "extended"),
        ("rewrite-first", False, "extended"),
        ("ort-all", True, "all"),
    ):
        paths[variant] = keep / f"{name}.{variant}.onnx"
        _, reports[variant] = quake_onnx.optimize(
            paths["original"], paths[variant], ort_fusions=fusions, ort_level=level
        )
    sessions = {k: session(p) for k, p in paths.items()}
    if name.startswith("bert"):
        # Control: ORT's own SkipLayerNormalization against LayerNormalization + Add.
        sessions["original -SLN"] = session(paths["original"], ["SkipLayerNormFusion"])
    ref = sessions["original"].run(None, feeds)[0]
    times = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(20):
            s.run(None, feeds)
    for _ in range(rounds):
        for k, s in sessions.items():
            for _ in range(runs):
                t0 = time.perf_counter()
                s.run(None, feeds)
                times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["original"])
    print(f"\n{name}: median of {runs * rounds} runs, 1 thread, ORT_ENABLE_ALL, kernels {quake_onnx.selected_isa()}")
    print(f"  {'variant':14} {'ms':>8} {'vs orig':>8} {'max|dy|':>9}  replaced / nodes after optimize")
    for k in sessions:
        med = statistics.median(times[k])
        err = float(np.abs(sessions[k].run(None, feeds)[0] - ref).max())
        rep = reports.get(k)
        what = "-" if rep is None else f"{rep.counts()}{' (NCHWc layout fixed for this CPU)' if rep.warnings else ''}"
        print(f"  {k:14} {med * 1e3:8.3f} {base / med:7.3f}x {err:9.2e}  {what}")
        if k in paths:
            print(f"  {'':14} saved:   {ops_of(paths[k])}")
            print(f"  {'':14} runtime: {runtime_graph(paths[k], keep / 'runtime')}")
        else:
            print(f"  {'':14} original without ORT's SkipLayerNormFusion")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=["bert_small", "bert_base", "cnn", "cnn_large"])
    ap.add_argument("--keep", type=Path, default=None, help="folder for the models (default: a temporary one)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        keep = args.keep or Path(tmp)
        models = {
            "bert_small": lambda: bert_layer(),
            "bert_base": lambda: bert_layer(seq=128, hidden=768, heads=12, ff=3072),
            "cnn": lambda: cnn(),
            "cnn_large": lambda: cnn(size=160, width=48, blocks=4),
        }
        for name in args.models:
            model, feeds = models[name]()
            measure(name, model, feeds, args.runs, args.rounds, keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
