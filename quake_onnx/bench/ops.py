"""Operator benchmark: every com.quake op against ONNX Runtime's own op.

    python -m quake_onnx.bench ops [--threads 1,2] [--orders 1,2,3] [--markdown FILE]

Both sides run in this process, in sessions with the same intra_op_num_threads
and ORT_ENABLE_ALL (one session alive at a time; three interleaved rounds,
fastest median kept). Each timed model holds K independent nodes of the op, each
reading its own graph input (all bound to one buffer through IOBinding) and
writing a preallocated output, so per-call Python overhead is spread over K
nodes and ORT cannot merge the nodes. Reported: Gelem/s (K * elements / median
time), the speed ratio quake / ORT, and the roofline share: Gelem/s over the
rate of a plain copy of the same tensor (read + write, K copies per sample,
the same number of threads), measured in the same rounds. An elementwise op
cannot beat the copy; Softmax reads its input more than once.

Denormal inputs are timed apart (`denormal_rows`): Intel cores run float
arithmetic on denormals through slow microcode, where bit-level kernels win
by far, which says nothing about normal data.

The Glu rows (com.quake Glu, act(gate) * up) compare with the unfused pair
ONNX Runtime runs for a gated MLP: QuickGelu(g) * u, Sigmoid/Mul/Mul (which
ORT_ENABLE_ALL itself fuses into QuickGelu * Mul), Gelu(g) * u. Each node
reads two inputs (gate and up, bound to two buffers) and writes one output,
so its memory roofline is not the plain copy of the other rows: the "copy"
column of a Glu row is a copy moving the same bytes, 1.5 x the elements
copied (2 n floats read + n written = 3 n = 1.5 n read + 1.5 n written),
expressed in the op's own elements per second. The unfused pair moves 5 n
floats (the activation 1 + 1, the Mul 2 + 1), so on data beyond the caches
the fusion can gain at most 5/3 = 1.67x; reads and writes do not cost the
same (a write first reads its line unless the store streams), so the share
of the copy is a guide, not an exact bound. GLU_SHAPES adds an LLM MLP's
[tokens, intermediate] (512 x 5632) to the standard shapes for these rows.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

import quake_onnx

from . import machine

SHAPES = [(12, 128, 128), (12, 512, 512), (128, 3072), (1, 32, 112, 112)]
# Extra shapes of the two-input (Glu) rows: a Llama-style MLP's [tokens, intermediate].
GLU_SHAPES = [(512, 5632)]
NODES_PER_MODEL = 8


@dataclass(frozen=True)
class Baseline:
    """ONNX Runtime's way of computing an op: a builder of one node's subgraph."""

    name: str
    quake_op: str
    quake_attrs: dict
    build: callable  # (input name, output name, index) -> (nodes, opset imports); two inputs: a (gate, up) pair
    inputs: int = 1  # 2: the node reads a gate and an up tensor (Glu)


def _single(op_type, domain="", **attrs):
    def build(x, y, i):
        return [helper.make_node(op_type, [x], [y], name=f"n{i}", domain=domain, **attrs)]

    return build


def _mul_sigmoid(x, y, i):
    return [
        helper.make_node("Sigmoid", [x], [f"s{i}"], name=f"sig{i}"),
        helper.make_node("Mul", [x, f"s{i}"], [y], name=f"mul{i}"),
    ]


def _gated(build_act):
    """act(gate) * up as ORT runs it unfused: the activation's nodes, then a Mul."""

    def build(x, y, i):
        gate, up = x
        return [*build_act(gate, f"a{i}", i), helper.make_node("Mul", [f"a{i}", up], [y], name=f"gate_mul{i}")]

    return build


BASELINES = [
    Baseline("Softmax", "Softmax", {}, _single("Softmax", axis=-1)),
    Baseline("LogSoftmax", "LogSoftmax", {}, _single("LogSoftmax", axis=-1)),
    Baseline("Gelu (erf)", "Gelu", {"approximate": "none"}, _single("Gelu", approximate="none")),
    Baseline("Gelu (tanh)", "Gelu", {"approximate": "tanh"}, _single("Gelu", approximate="tanh")),
    Baseline("Sigmoid", "Sigmoid", {}, _single("Sigmoid")),
    Baseline("Silu vs QuickGelu", "Silu", {}, _single("QuickGelu", domain="com.microsoft", alpha=1.0)),
    Baseline("Silu vs Mul-Sigmoid", "Silu", {}, _mul_sigmoid),
    Baseline("Exp", "Exp", {}, _single("Exp")),
    Baseline(
        "Glu silu vs QuickGelu*Mul",
        "Glu",
        {"activation": "silu"},
        _gated(_single("QuickGelu", domain="com.microsoft", alpha=1.0)),
        inputs=2,
    ),
    Baseline("Glu silu vs Sigmoid/Mul/Mul", "Glu", {"activation": "silu"}, _gated(_mul_sigmoid), inputs=2),
    Baseline(
        "Glu gelu vs Gelu*Mul", "Glu", {"activation": "gelu"}, _gated(_single("Gelu", approximate="none")), inputs=2
    ),
    Baseline(
        "Glu gelu_tanh vs Gelu(tanh)*Mul",
        "Glu",
        {"activation": "gelu_tanh"},
        _gated(_single("Gelu", approximate="tanh")),
        inputs=2,
    ),
]


def _input_names(i: int, inputs: int):
    return f"x{i}" if inputs == 1 else (f"x{i}", f"u{i}")


def _quake_build(base: Baseline, order: int):
    attrs = dict(base.quake_attrs, order=order)

    def build(x, y, i):
        names = [x] if isinstance(x, str) else list(x)
        return [helper.make_node(base.quake_op, names, [y], name=f"n{i}", domain="com.quake", **attrs)]

    return build


def _model(shape, build_node, n_inputs: int = 1, dtype=np.float32) -> bytes:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes, inputs, outputs = [], [], []
    for i in range(NODES_PER_MODEL):
        names = _input_names(i, n_inputs)
        for name in [names] if n_inputs == 1 else names:
            inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        outputs.append(helper.make_tensor_value_info(f"y{i}", elem, list(shape)))
        nodes += build_node(names, f"y{i}", i)
    graph = helper.make_graph(nodes, "bench", inputs, outputs)
    opsets = [helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1), helper.make_opsetid("com.quake", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10).SerializeToString()


def _session(model: bytes, threads: int, with_library: bool) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if with_library:
        so.register_custom_ops_library(quake_onnx.get_library_path())
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _median_seconds(
    model: bytes, threads: int, with_library: bool, x: np.ndarray, min_time: float, up: np.ndarray = None
) -> float:
    """Median time of one run in a fresh session, which is destroyed afterwards
    so its pool threads cannot spin against the next measurement. `up`: the
    second input of two-input nodes (u0, u1, ...), one buffer for all."""
    session = _session(model, threads, with_library)
    binding = session.io_binding()
    x_value = ort.OrtValue.ortvalue_from_numpy(x)
    up_value = None if up is None else ort.OrtValue.ortvalue_from_numpy(up)
    # One output buffer for all nodes: ORT's arena likewise hands a node a
    # recently freed (cache-warm) buffer in real models.
    y_value = ort.OrtValue.ortvalue_from_numpy(np.empty_like(x))
    for i in range(NODES_PER_MODEL):
        binding.bind_ortvalue_input(f"x{i}", x_value)
        if up_value is not None:
            binding.bind_ortvalue_input(f"u{i}", up_value)
        binding.bind_ortvalue_output(f"y{i}", y_value)
    for _ in range(3):
        session.run_with_iobinding(binding)
    times, start = [], time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_time and len(times) < 500):
        t0 = time.perf_counter()
        session.run_with_iobinding(binding)
        times.append(time.perf_counter() - t0)
    del binding, session
    gc.collect()
    return statistics.median(times)


@dataclass
class Row:
    op: str
    shape: tuple
    threads: int
    ort_gelems: float
    quake_gelems: dict  # order -> Gelem/s
    copy_gelems: float = float("nan")  # a plain copy of the same tensor, same threads

    def ratio(self, order: int) -> float:
        return self.quake_gelems[order] / self.ort_gelems

    def share(self, order: int) -> float:
        """Of the copy rate: 1.0 is the memory roofline of an elementwise op."""
        return self.quake_gelems[order] / self.copy_gelems


def run(
    shapes=SHAPES,
    threads=(1, 2),
    orders=(1, 2, 3),
    baselines=BASELINES,
    min_time=0.3,
    rounds=3,
    seed=0,
    progress=print,
    dtype=np.float32,
):
    """Each configuration is measured `rounds` times, interleaved with the
    others of its row, and the fastest median kept: a transient disturbance
    of the machine then cannot decide a ratio. dtype float16 times both sides
    on float16 tensors (ORT's float16 ops, or the casts around its float ones
    that ORT inserts where its CPU provider has no float16 kernel) and the
    copy on the same bytes."""
    rng = np.random.default_rng(seed)
    rows = []
    glu_shapes = [s for s in GLU_SHAPES if s not in shapes] if shapes is SHAPES else []
    for shape in [*shapes, *glu_shapes]:
        # Activations of a typical scale; softmax inputs like attention logits.
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        chosen = baselines if shape not in glu_shapes else [b for b in baselines if b.inputs == 2]
        rows += _time_shape(x, threads, orders, chosen, min_time, rounds, progress)
    return rows


def denormal_rows(
    shape=(128, 3072), threads=(1,), orders=(2,), baselines=BASELINES, min_time=0.3, rounds=3, seed=0, progress=print
):
    """The same measurement on denormal inputs (|x| < 1.2e-38), reported apart."""
    rng = np.random.default_rng(seed)
    x = (rng.uniform(-1.0, 1.0, shape) * np.finfo(np.float32).tiny).astype(np.float32)
    return _time_shape(x, threads, orders, baselines, min_time, rounds, progress)


def _time_shape(x, threads, orders, baselines, min_time, rounds, progress) -> list[Row]:
    rows = []
    elems = x.size * NODES_PER_MODEL / 1e9
    y = np.empty_like(x)
    # Two-input rows: an up tensor of a typical scale, and a copy moving their bytes
    # (2 n read + n written as 1.5 n read + 1.5 n written; module docstring).
    up = np.random.default_rng(1).standard_normal(x.shape).astype(x.dtype)
    same_bytes = np.resize(x, x.size * 3 // 2)
    same_bytes_out = np.empty_like(same_bytes)
    for base in baselines:
        models = {"ort": (_model(x.shape, base.build, base.inputs, x.dtype), False)}
        for order in orders:
            models[order] = (_model(x.shape, _quake_build(base, order), base.inputs, x.dtype), True)
        second = up if base.inputs == 2 else None
        src, dst = (same_bytes, same_bytes_out) if base.inputs == 2 else (x, y)
        for t in threads:
            best = {key: float("inf") for key in [*models, "copy"]}
            for _ in range(rounds):
                for key, (model, with_library) in models.items():
                    best[key] = min(best[key], _median_seconds(model, t, with_library, x, min_time / rounds, second))
                best["copy"] = min(best["copy"], machine.copy_seconds(src, dst, t, NODES_PER_MODEL, min_time / rounds))
            row = Row(
                base.name, x.shape, t, elems / best["ort"], {o: elems / best[o] for o in orders}, elems / best["copy"]
            )
            rows.append(row)
            progress(_format_row(row, orders))
    return rows


def _format_row(row: Row, orders) -> str:
    cells = [
        row.op,
        "x".join(map(str, row.shape)),
        str(row.threads),
        f"{row.copy_gelems:.2f}",
        f"{row.ort_gelems:.2f} ({row.ort_gelems / row.copy_gelems:.0%})",
    ]
    cells += [f"{row.quake_gelems[o]:.2f} ({row.ratio(o):.2f}x, {row.share(o):.0%})" for o in orders]
    return "| " + " | ".join(cells) + " |"


def markdown(rows, orders) -> str:
    head = ["op (ORT baseline)", "shape", "threads", "copy Gelem/s", "ORT Gelem/s (of copy)"]
    head += [f"order {o} Gelem/s (ratio, of copy)" for o in orders]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [_format_row(r, orders) for r in rows]
    return "\n".join(lines)


def machine_line() -> str:
    return (
        f"{machine.describe()}; onnxruntime {ort.__version__}, onnx {onnx.__version__}, "
        f"quake-onnx {quake_onnx.__version__} kernels: {quake_onnx.selected_isa()}"
    )
