"""A/B of two builds of the custom-op library on one com.quake node: the
same model, inputs and thread count in two sessions of one process, each
registering its own library, timed in paired interleaved rounds (per round a
batch of runs of A then of B, the order alternating by round, a wait after
each batch until its pool threads stop spinning:
quake_onnx.check.paired.rotated_batches); prints B's
speed-up over A (A's time / B's time per round), median [q1, q3], and
whether the two outputs are bit-identical.

For kernel changes that do not show in an op's contract: build the previous
commit's library in a worktree (CMakeLists.txt, `-DCMAKE_BUILD_TYPE=Release`)
and compare it with this one. Calibrate first with two copies of one file
(`cp lib.so /tmp/a.so; cp lib.so /tmp/b.so`): on Zen 4 such a pair read
0.95-1.03x with tight quartiles (BENCHMARKS.md, "what library_ab.py can
resolve"), so a difference of a few percent is no evidence.

    python benchmarks/library_ab.py --a /work/wt/old/build/rel/libquake_ops.so \\
        --b build/cp311-cp311-linux_x86_64/libquake_ops.so --heads 12 --kv-heads 12 --seq 512 --causal
    python benchmarks/library_ab.py --a ... --b ... --op Sigmoid --shape 12x512x512 [--denormal]

--op Attention (default): Q is [1, H, S, D], K and V [1, H_kv, S, D] (GQA
when H_kv < H), no mask, scale 1/sqrt(D), float32, inputs standard normal.
--op Exp | Sigmoid | Silu | Gelu | Softmax | LogSoftmax: one node at --order
on a float32 tensor (--dtype float16: float16) of --shape (Softmax and
LogSoftmax over its last axis), inputs standard normal times 3 (as
`quake_onnx.bench ops`), or with --denormal uniform in (-tiny, tiny), the
type's smallest normal; --in-place feeds it X + 0, an
Add's output that ONNX Runtime lets the node overwrite, as most nodes inside
a model get their input. Both libraries take the ISA table QUAKE_ISA names,
if set.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from quake_onnx.check.paired import rotated_batches, session_batches

ONE_INPUT = ("Exp", "Sigmoid", "Silu", "Gelu", "Softmax", "LogSoftmax")  # order attribute, last axis


def model(
    op: str,
    causal: bool,
    dim: int,
    order: int,
    precision: str = "float32",
    in_place: bool = False,
    dtype: int = TensorProto.FLOAT,
) -> bytes:
    """One com.quake node, inputs and output of `dtype` (FLOAT or FLOAT16) and
    any shape; with `in_place`, a one-input op reads X + 0 (an Add's output,
    which ORT lets the op overwrite, as inside a model) instead of the graph
    input."""
    if op == "Attention":
        names = "QKV"
        attrs = {"scale": float(dim) ** -0.5, "causal": int(causal), "precision": precision}
    else:
        names, attrs = "X", {"order": order}
    inputs = [helper.make_tensor_value_info(n, dtype, None) for n in names]
    nodes = []
    if in_place and op != "Attention":
        nodes.append(helper.make_node("Add", ["X", "zero"], ["X0"]))
        node_inputs = ["X0"]
    else:
        node_inputs = list(names)
    nodes.append(helper.make_node(op, node_inputs, ["Y"], domain="com.quake", **attrs))
    output = helper.make_tensor_value_info("Y", dtype, None)
    zero = [helper.make_tensor("zero", dtype, [], [0.0])] if in_place else []
    graph = helper.make_graph(nodes, "library_ab", inputs, [output], initializer=zero)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.quake", 1)])
    m.ir_version = 8
    return m.SerializeToString()


def session(data: bytes, library: str, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.register_custom_ops_library(library)
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="path of library A (the baseline)")
    ap.add_argument("--b", required=True, help="path of library B")
    ap.add_argument("--op", choices=("Attention", *ONE_INPUT), default="Attention")
    ap.add_argument("--shape", default="12x512x512", help="one-input ops: the input's shape, e.g. 128x3072")
    ap.add_argument("--order", type=int, choices=(1, 2, 3), default=2, help="one-input ops: the order attribute")
    ap.add_argument("--denormal", action="store_true", help="one-input ops: subnormal inputs")
    ap.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="one-input ops: tensor type")
    ap.add_argument(
        "--in-place", action="store_true", help="one-input ops: the input an Add's output the op may overwrite"
    )
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--precision", choices=("float32", "bfloat16"), default="float32", help="Attention's products")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--budget", type=float, default=0.2, help="seconds per batch of runs of one library")
    args = ap.parse_args()
    hkv = args.kv_heads or args.heads
    if args.heads % hkv:
        ap.error(f"--kv-heads {hkv} must divide --heads {args.heads}")
    rng = np.random.default_rng(0)
    if args.op == "Attention":
        feeds = {"Q": rng.standard_normal((1, args.heads, args.seq, args.dim)).astype(np.float32)}
        for n in "KV":
            feeds[n] = rng.standard_normal((1, hkv, args.seq, args.dim)).astype(np.float32)
        what = f"H{args.heads}/{hkv} S{args.seq} D{args.dim}{' causal' if args.causal else ''} {args.precision}"
    else:
        try:
            shape = tuple(int(d) for d in args.shape.lower().split("x"))
        except ValueError:
            ap.error(f"--shape {args.shape!r} is not like 12x512x512")
        np_dtype = np.float16 if args.dtype == "float16" else np.float32
        tiny = float(np.finfo(np_dtype).tiny)
        x = rng.uniform(-1.0, 1.0, shape) * tiny if args.denormal else rng.standard_normal(shape) * 3
        feeds = {"X": x.astype(np_dtype)}
        what = f"{args.op} order {args.order} {args.dtype} {args.shape}{' subnormal' if args.denormal else ''}"
        what += " in place" if args.in_place else ""
    if args.op == "Attention" and args.dtype != "float32":
        ap.error("--dtype applies to one-input ops; Attention here is float32")
    dtype = TensorProto.FLOAT16 if args.dtype == "float16" else TensorProto.FLOAT
    data = model(args.op, args.causal, args.dim, args.order, args.precision, args.in_place, dtype)
    sessions = {"A": session(data, args.a, args.threads), "B": session(data, args.b, args.threads)}
    outputs = {k: s.run(None, feeds)[0] for k, s in sessions.items()}
    batches, _ = session_batches(sessions, feeds, args.budget)
    times = rotated_batches(batches, args.rounds)
    ratios = [a / b for a, b in zip(times["A"], times["B"])]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    print(
        f"{what}, {args.threads} thread(s): "
        f"A {statistics.median(times['A']) * 1e3:.3f} ms, B {statistics.median(times['B']) * 1e3:.3f} ms, "
        f"B's speed-up {statistics.median(ratios):.3f} [{q1:.3f}, {q3:.3f}], "
        f"outputs {'bit-identical' if np.array_equal(outputs['A'], outputs['B']) else 'differ'}"
    )


if __name__ == "__main__":
    main()
