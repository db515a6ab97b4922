"""How far one long Softmax row can scale over threads, and what caps it.

A single com.quake Softmax node on [1, N] (a vocabulary row: N = 50257 for
GPT-2) is timed at 1 and at T threads, together with the same node on
[1, 16], whose time is all fixed cost: ONNX Runtime's Run (with io-binding,
so no output allocation) and the custom-op call. The fixed cost is paid once
per call whatever the thread count, so the whole call's scaling,
t(1) / t(T), is capped at t(1) / (fixed + (t(1) - fixed) / T) even when the
kernel's own split is perfect; the kernel's scaling is
(t(1) - fixed) / (t(T) - fixed).

Sessions for every configuration live in one process and are timed in
interleaved rounds (quake_onnx.check.paired.rotated_batches: per round a
batch of calls of each, the order rotated by round, a wait after each batch
until its pool threads stop spinning); each time is the median over rounds
of a batch's mean.

    python benchmarks/long_row_scaling.py --length 50257 --threads 2 --rounds 9

Prints a Markdown table (microseconds per call) and the three ratios.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

import quake_onnx
from quake_onnx.check.paired import rotated_batches


def softmax_model(n: int, op: str) -> bytes:
    """One com.quake Softmax or LogSoftmax (order 2) over the last axis of a float32 [1, n] input."""
    node = helper.make_node(op, ["X"], ["Y"], axis=-1, domain="com.quake", order=2)
    graph = helper.make_graph(
        [node],
        "row",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.quake", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


class Bound:
    """A session bound to fixed input and output buffers: `call()` is one Run."""

    def __init__(self, n: int, op: str, threads: int):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.register_custom_ops_library(quake_onnx.get_library_path())
        self.session = ort.InferenceSession(softmax_model(n, op), so, providers=["CPUExecutionProvider"])
        self.x = np.random.default_rng(0).standard_normal((1, n), dtype=np.float32)
        self.y = np.empty_like(self.x)
        self.io = self.session.io_binding()
        self.io.bind_cpu_input("X", self.x)
        self.io.bind_output("Y", "cpu", element_type=np.float32, shape=self.y.shape, buffer_ptr=self.y.ctypes.data)

    def batch_us(self, calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            self.session.run_with_iobinding(self.io)
        return (time.perf_counter() - start) / calls * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--length", type=int, default=50257, help="the row's length N")
    ap.add_argument("--threads", type=int, default=2, help="the thread count compared with 1")
    ap.add_argument("--op", choices=("Softmax", "LogSoftmax"), default="Softmax")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=2000, help="calls per batch")
    args = ap.parse_args(argv)
    if args.length < 16 or args.threads < 2 or args.rounds < 1 or args.calls < 1:
        ap.error("--length >= 16, --threads >= 2, --rounds and --calls >= 1")

    configs = {
        "fixed, 1 thread": Bound(16, args.op, 1),
        f"fixed, {args.threads} threads": Bound(16, args.op, args.threads),
        "row, 1 thread": Bound(args.length, args.op, 1),
        f"row, {args.threads} threads": Bound(args.length, args.op, args.threads),
    }
    for bound in configs.values():
        bound.batch_us(args.calls // 10 + 1)  # warm-up: pools started, pages touched
    times = rotated_batches({k: functools.partial(b.batch_us, args.calls) for k, b in configs.items()}, args.rounds)
    us = {name: statistics.median(t) for name, t in times.items()}

    fixed = us["fixed, 1 thread"]
    one, many = us["row, 1 thread"], us[f"row, {args.threads} threads"]
    print(f"com.quake {args.op} [1, {args.length}], order 2, {args.rounds} rounds of {args.calls} calls,", end=" ")
    print(f"ORT {ort.__version__}")
    print("| configuration | us per call |")
    print("|---|---|")
    for name, t in us.items():
        print(f"| {name} | {t:.2f} |")
    print(f"whole call scaling t(1)/t({args.threads}): {one / many:.2f}x")
    print(f"kernel scaling (t(1) - fixed)/(t({args.threads}) - fixed): {(one - fixed) / (many - fixed):.2f}x")
    print(f"cap of the whole call with a perfect split: {one / (fixed + (one - fixed) / args.threads):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
