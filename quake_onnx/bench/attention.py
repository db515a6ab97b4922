"""Attention benchmark: com.quake Attention against ONNX Runtime's ways of
computing the same block.

    python -m quake_onnx.bench attention [--threads 1,2] [--rounds 5] [--markdown FILE]

Per shape (B = 1, D = 64) and thread count, in this process, interleaved:
  - quake: one com.quake Attention node (K given transposed, k_transposed=1);
  - unfused: MatMul(Q, K^T) -> Mul(scale) -> [Add(mask)] -> Softmax -> MatMul(V)
    at ORT_ENABLE_ALL, the form exports keep;
  - MHA: com.microsoft.MultiHeadAttention with Q, K, V as [B, S, H*D] (its own
    layout; the transposes are not timed), where it applies: no mask, not
    causal (ORT's CPU flash path);
  - ORT's MatMul of 512x512x512, the GEMM rate of the same run;
  - with --bf16, quake_bf16: the quake node with precision="bfloat16" (the
    CPU's bf16 engine, or the float32 kernel where it has none), its speed-up
    taken per round against the float32 quake node.
Each round times every variant in a fresh session (one alive at a time, so no
idle pool spins against the next) and the ratios are taken per round, paired:
this machine drifts between rounds more than the variants differ. Reported:
median ms, median of the per-round ratios (with the quartiles over rounds), and
GFLOP/s of the useful work (4 D per visible query-key pair: causal counts half).
Peak RSS of one H12 S4096 block per variant comes from a fresh process each.
"""

from __future__ import annotations

import gc
import multiprocessing
import resource
import statistics
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import quake_onnx

HEAD_DIM = 64


@dataclass(frozen=True)
class Shape:
    name: str
    heads: int
    sq: int
    skv: int
    causal: bool = False

    def visible_pairs(self) -> int:
        if not self.causal:
            return self.sq * self.skv
        past = self.skv - self.sq
        return sum(min(self.skv, i + past + 1) for i in range(self.sq))

    def gflop(self) -> float:
        return 4.0 * HEAD_DIM * self.heads * self.visible_pairs() * 1e-9


SHAPES = [
    Shape("H12 S128", 12, 128, 128),
    Shape("H12 S512", 12, 512, 512),
    Shape("H6 S1500", 6, 1500, 1500),
    Shape("H12 S2048", 12, 2048, 2048),
    Shape("H12 S4096", 12, 4096, 4096),
    Shape("H12 S2048 causal", 12, 2048, 2048, causal=True),
    Shape("decode H32 past 4096", 32, 1, 4096),
]
VARIANTS = ("quake", "unfused", "mha")
BF16 = "quake_bf16"  # the quake node with precision="bfloat16" (run(bf16=True))


def _model(nodes, inputs, outputs, initializers=()) -> bytes:
    graph = helper.make_graph(nodes, "attention_bench", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1), helper.make_opsetid("com.quake", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()


def _info(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def build(variant: str, s: Shape, order: int = 2):
    """(model bytes, {input name: array shape}, output shape) or None where the variant does not apply."""
    h, sq, skv, d = s.heads, s.sq, s.skv, HEAD_DIM
    scale = 1.0 / np.sqrt(d)
    q, kt, v, y = (1, h, sq, d), (1, h, d, skv), (1, h, skv, d), (1, h, sq, d)
    masked = s.causal  # the unfused block adds the causal mask; quake takes causal=1
    if variant in ("quake", BF16):
        extra = {"precision": "bfloat16"} if variant == BF16 else {}
        node = helper.make_node(
            "Attention",
            ["Q", "Kt", "V"],
            ["Y"],
            domain="com.quake",
            scale=float(scale),
            causal=int(s.causal),
            k_transposed=1,
            order=order,
            **extra,
        )
        shapes = {"Q": q, "Kt": kt, "V": v}
        return _model([node], [_info(n, sh) for n, sh in shapes.items()], [_info("Y", y)]), shapes, y
    if variant == "unfused":
        shapes = {"Q": q, "Kt": kt, "V": v}
        nodes = [helper.make_node("MatMul", ["Q", "Kt"], ["S"]), helper.make_node("Mul", ["S", "scale"], ["T"])]
        last = "T"
        if masked:
            shapes["M"] = (1, 1, sq, skv)
            nodes.append(helper.make_node("Add", ["T", "M"], ["U"]))
            last = "U"
        nodes += [helper.make_node("Softmax", [last], ["P"], axis=-1), helper.make_node("MatMul", ["P", "V"], ["Y"])]
        init = [numpy_helper.from_array(np.array(scale, np.float32), "scale")]
        return _model(nodes, [_info(n, sh) for n, sh in shapes.items()], [_info("Y", y)], init), shapes, y
    if variant == "mha":
        if s.causal:
            return None
        shapes = {"query": (1, sq, h * d), "key": (1, skv, h * d), "value": (1, skv, h * d)}
        node = helper.make_node(
            "MultiHeadAttention", list(shapes), ["Y"], domain="com.microsoft", num_heads=h, scale=float(scale)
        )
        out = (1, sq, h * d)
        return _model([node], [_info(n, sh) for n, sh in shapes.items()], [_info("Y", out)]), shapes, out
    raise ValueError(variant)


def matmul_model(n=512) -> tuple:
    node = helper.make_node("MatMul", ["A", "B"], ["Y"])
    shapes = {"A": (n, n), "B": (n, n)}
    return _model([node], [_info(k, v) for k, v in shapes.items()], [_info("Y", (n, n))]), shapes, (n, n)


def _session(model: bytes, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.register_custom_ops_library(quake_onnx.get_library_path())
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _inputs(shapes: dict, causal_shape: Shape | None, rng) -> dict:
    arrays = {}
    for name, shape in shapes.items():
        if name == "M":  # the causal mask of the unfused block
            i = np.arange(shape[-2])[:, None]
            j = np.arange(shape[-1])[None, :]
            past = shape[-1] - shape[-2]
            arrays[name] = np.where(j > i + past, -np.inf, 0).astype(np.float32).reshape(shape)
        else:
            arrays[name] = rng.standard_normal(shape).astype(np.float32)
    return arrays


def time_once(built, threads: int, arrays: dict, min_time: float, min_runs: int = 3) -> float:
    """Median seconds of one run in a fresh session, destroyed afterwards."""
    model, _, out_shape = built
    session = _session(model, threads)
    binding = session.io_binding()
    for name, a in arrays.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(a))
    binding.bind_ortvalue_output("Y", ort.OrtValue.ortvalue_from_numpy(np.empty(out_shape, np.float32)))
    session.run_with_iobinding(binding)  # warm-up
    times, start = [], time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < min_time and len(times) < 200):
        t0 = time.perf_counter()
        session.run_with_iobinding(binding)
        times.append(time.perf_counter() - t0)
    del binding, session
    gc.collect()
    return statistics.median(times)


@dataclass
class Row:
    shape: Shape
    threads: int
    ms: dict  # variant -> median ms over rounds
    ratio: dict  # variant -> (median, q1, q3) of the per-round time(variant) / time(quake)
    matmul_gflops: float

    def gflops(self, variant: str) -> float:
        return self.shape.gflop() / (self.ms[variant] * 1e-3)


def _quartiles(values):
    if len(values) < 2:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return statistics.median(values), q[0], q[2]


def run(shapes=SHAPES, threads=(1, 2), rounds=5, min_time=0.4, order=2, seed=0, progress=print, bf16=False):
    rng = np.random.default_rng(seed)
    mm = matmul_model()
    mm_arrays = _inputs(mm[1], None, rng)
    rows = []
    variants = VARIANTS + ((BF16,) if bf16 else ())
    for s in shapes:
        built = {v: build(v, s, order) for v in variants}
        built = {v: b for v, b in built.items() if b is not None}
        arrays = {v: _inputs(b[1], s, rng) for v, b in built.items()}
        for t in threads:
            per_round = {v: [] for v in built}
            mm_rates = []
            for _ in range(rounds):
                mm_rates.append(2 * 512**3 / time_once(mm, t, mm_arrays, 0.2) * 1e-9)
                for v, b in built.items():
                    per_round[v].append(time_once(b, t, arrays[v], min_time / rounds))
            ms = {v: statistics.median(x) * 1e3 for v, x in per_round.items()}
            ratio = {v: _quartiles([a / q for a, q in zip(per_round[v], per_round["quake"])]) for v in built}
            if BF16 in built:  # the bf16 node's speed-up: time(quake) / time(quake_bf16), per round
                ratio[BF16] = _quartiles([q / b for q, b in zip(per_round["quake"], per_round[BF16])])
            row = Row(s, t, ms, ratio, statistics.median(mm_rates))
            rows.append(row)
            progress(format_row(row))
    return rows


HEADER = (
    "| shape | threads | quake ms (GFLOP/s) | unfused ms (GFLOP/s) | speed-up vs unfused [q1, q3] | "
    "MHA ms | speed-up vs MHA [q1, q3] | ORT MatMul GFLOP/s |\n|---|---|---|---|---|---|---|---|"
)
HEADER_BF16 = (
    "| shape | threads | quake ms (GFLOP/s) | unfused ms (GFLOP/s) | speed-up vs unfused [q1, q3] | "
    "MHA ms | speed-up vs MHA [q1, q3] | ORT MatMul GFLOP/s | quake bf16 ms (GFLOP/s) | "
    "bf16 speed-up vs quake [q1, q3] |\n|---|---|---|---|---|---|---|---|---|---|"
)


def header(bf16: bool = False) -> str:
    return HEADER_BF16 if bf16 else HEADER


def format_row(r: Row) -> str:
    def cell(v):
        return f"{r.ms[v]:.2f} ({r.gflops(v):.0f})" if v in r.ms else "-"

    def speed(v):
        if v not in r.ratio:
            return "-"
        med, q1, q3 = r.ratio[v]
        return f"{med:.2f}x [{q1:.2f}, {q3:.2f}]"

    mha = f"{r.ms['mha']:.2f}" if "mha" in r.ms else "-"
    line = (
        f"| {r.shape.name} | {r.threads} | {cell('quake')} | {cell('unfused')} | {speed('unfused')} | {mha} | "
        f"{speed('mha')} | {r.matmul_gflops:.0f} |"
    )
    if BF16 in r.ms:
        line += f" {cell(BF16)} | {speed(BF16)} |"
    return line


def markdown(rows) -> str:
    return "\n".join([header(any(BF16 in r.ms for r in rows))] + [format_row(r) for r in rows])


# ---------------------------------------------------------------------------
# Peak memory: each variant's block run once in a fresh process.


def _vm_hwm() -> int:
    """Peak RSS of this process in bytes (VmHWM: unlike getrusage's maxrss it
    does not inherit the peak of the process that started this one)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_child(variant: str, shape: Shape, threads: int, queue) -> None:
    built = build(variant, shape)
    arrays = _inputs(built[1], shape, np.random.default_rng(0))
    out = np.empty(built[2], np.float32)
    out.fill(0.0)  # resident before the baseline, as the inputs are
    base = _vm_hwm()
    session = _session(built[0], threads)
    binding = session.io_binding()
    for name, a in arrays.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(a))
    binding.bind_ortvalue_output("Y", ort.OrtValue.ortvalue_from_numpy(out))
    session.run_with_iobinding(binding)
    queue.put((base, _vm_hwm(), sum(a.nbytes for a in arrays.values()) + out.nbytes))


def peak_rss(shape: Shape = SHAPES[4], threads: int = 1, variants=VARIANTS) -> dict:
    """variant -> (MB of inputs and output, MB of peak RSS above the process
    before the session, MB of peak RSS in all)."""
    ctx = multiprocessing.get_context("spawn")
    out = {}
    for v in variants:
        if build(v, shape) is None:
            continue
        queue = ctx.Queue()
        p = ctx.Process(target=_rss_child, args=(v, shape, threads, queue))
        p.start()
        base, peak, io = queue.get(timeout=600)
        p.join()
        out[v] = (io / 2**20, (peak - base) / 2**20, peak / 2**20)
    return out


def rss_markdown(shape: Shape, result: dict) -> str:
    lines = [
        f"Peak RSS of one {shape.name} block (fresh process each; inputs and output are allocated before the "
        "session, so the growth is the session's and the run's):",
        "",
        "| variant | inputs + output MB | RSS growth MB | peak RSS MB |",
        "|---|---|---|---|",
    ]
    for v, (io, growth, peak) in result.items():
        lines.append(f"| {v} | {io:.0f} | {growth:.0f} | {peak:.0f} |")
    return "\n".join(lines)
