"""Break-even of the attention fusion: com.quake Attention against the same
block rewritten per op (MatMul -> Div -> Add(mask) -> com.quake Softmax ->
MatMul), both under ONNX Runtime at ORT_ENABLE_ALL with the library, at small
sizes where the fused op's fixed costs may not pay.

Each size is one BERT-style block with Q, K, V [1, H, S, D] as inputs (K
transposed by a Transpose in the graph), the two models made by
`rewrite_model` (all families; all but attention). `--mask` chooses the
additive mask: "zeros" (default) a [1, 1, 1, S] input that masks nothing,
as a single sentence at batch 1 has; "padding" the same with its last S/8
keys at -inf, as the shorter sentences of a batch have (once S/8 covers a
whole key tile, the fused op skips it); "none" no mask input and no Add, as
ViT and Whisper blocks have; "causal" a constant [1, 1, S, S] mask, 0 on and
below the diagonal and -inf above, as decoders export it (fused with
causal=1, which skips the masked tiles). The mask matters: the per-op graph adds it in
a pass of its own over the S x S scores, which the fused op folds into its
online step, so without one the per-op graph is 7-14 % faster and the
fused op's margin smaller (docs/optimize.md, "Attention fusion"). Timing is
paired and interleaved (quake_onnx.check.paired.rotated_batches): per round, a
batch of runs of one model then of the other (the order alternating by round,
and a wait after each batch until its session's pool threads stop spinning),
so drifts of a shared machine hit both; the ratio is taken per round and its
median reported with the quartiles.

    python benchmarks/attention_break_even.py --heads 12 --dim 64 --seqs 16,32,64,128,256 --rounds 15

--precision bfloat16 sets the fused node's precision (the per-op block stays float32).

--baseline onnx-attention makes the block one ONNX Attention node (opset 23,
the same Q, K, V and mask; `--mask causal` as is_causal=1) instead of the MatMul chain: the "per-op" column
is then ONNX Runtime's own CPU Attention kernel, which the rewriter replaces
with com.quake Attention under the same floors (rules/onnx_attention.py).

Prints a Markdown table: S, score elements (H S^2), per-op and fused median
times, and fused speed-up (per-op time / fused time) median [q1, q3]. The
break-even is the smallest score-element count from which every larger size's
lower quartile is >= 1.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import quake_onnx
from quake_onnx._library import attention_bf16_engine
from quake_onnx.check.paired import rotated_batches, session_batches
from quake_onnx.rewrite import ALL_OPS, rewrite_model


def positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of whole numbers") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers > 0")
    return values


MASKS = ("zeros", "padding", "none", "causal")
BASELINES = ("per-op", "onnx-attention")


def mask_shape(seq: int, baseline: str) -> list[int]:
    """[1, 1, 1, S] (one row broadcast over the queries); ONNX Runtime's Attention
    kernel wants the mask's query axis in full, [1, 1, S, S]."""
    return [1, 1, seq if baseline == "onnx-attention" else 1, seq]


def causal_mask(seq: int) -> np.ndarray:
    """A decoder's mask as exports write it, [1, 1, S, S]: 0 on and below the diagonal, -inf above."""
    return np.where(np.tril(np.ones((seq, seq), bool)), 0.0, -np.inf).astype(np.float32)[None, None]


def block(heads: int, seq: int, dim: int, mask: str = "zeros", baseline: str = "per-op") -> onnx.ModelProto:
    """The block; `mask` "none" has no mask input, `baseline` "onnx-attention" is one
    ONNX Attention node (MASKS, BASELINES, the module docstring)."""
    shape = [1, heads, seq, dim]
    with_mask = mask != "none"
    causal = mask == "causal"
    if baseline == "onnx-attention":
        return _onnx_attention_block(shape, with_mask and not causal, causal)
    nodes = [
        helper.make_node("Transpose", ["K"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["Q", "kt"], ["s"]),
        helper.make_node("Div", ["s", "sqrt_d"], ["scaled"]),
        *([helper.make_node("Add", ["scaled", "M"], ["masked"])] if with_mask else []),
        helper.make_node("Softmax", ["masked" if with_mask else "scaled"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "V"], ["Y"]),
    ]
    mask_input = (
        [helper.make_tensor_value_info("M", TensorProto.FLOAT, mask_shape(seq, baseline))]
        if with_mask and not causal
        else []
    )
    graph = helper.make_graph(
        nodes,
        "attention",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "QKV"] + mask_input,
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, shape)],
        initializer=[numpy_helper.from_array(np.array(np.sqrt(dim), np.float32), "sqrt_d")]
        + ([numpy_helper.from_array(causal_mask(seq), "M")] if causal else []),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _onnx_attention_block(shape: list[int], with_mask: bool, causal: bool) -> onnx.ModelProto:
    """One opset-23 Attention node; causal as its is_causal=1 (no mask input)."""
    node = helper.make_node("Attention", ["Q", "K", "V"] + (["M"] if with_mask else []), ["Y"], is_causal=int(causal))
    mask_input = (
        [helper.make_tensor_value_info("M", TensorProto.FLOAT, mask_shape(shape[2], "onnx-attention"))]
        if with_mask
        else []
    )
    graph = helper.make_graph(
        [node],
        "attention",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "QKV"] + mask_input,
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.register_custom_ops_library(quake_onnx.get_library_path())
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def measure(
    heads: int,
    seq: int,
    dim: int,
    rounds: int,
    threads: int,
    budget: float,
    precision: str,
    mask: str = "zeros",
    baseline: str = "per-op",
) -> dict:
    model = block(heads, seq, dim, mask, baseline)
    fused, report = rewrite_model(model, min_elements={})
    fused_nodes = [n for n in fused.graph.node if n.domain == "com.quake" and n.op_type == "Attention"]
    assert fused_nodes, report.decisions
    for n in fused_nodes:
        n.attribute.append(helper.make_attribute("precision", precision))
    per_op, _ = rewrite_model(model, ops=ALL_OPS - {"attention"})
    rng = np.random.default_rng(seq)
    feeds = {n: rng.standard_normal((1, heads, seq, dim)).astype(np.float32) for n in "QKV"}
    if mask not in ("none", "causal"):
        feeds["M"] = np.zeros(mask_shape(seq, baseline), np.float32)
    if mask == "padding":
        feeds["M"][..., seq - seq // 8 :] = -np.inf
    sessions = {"per_op": session(per_op, threads), "fused": session(fused, threads)}
    got = {k: s.run(None, feeds)[0] for k, s in sessions.items()}
    error = float(np.abs(got["fused"] - got["per_op"]).max())
    batches, runs = session_batches(sessions, feeds, budget)  # warmed up, about `budget` seconds each
    times = rotated_batches(batches, rounds)
    ratios = [p / f for p, f in zip(times["per_op"], times["fused"])]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return {
        "seq": seq,
        "elements": heads * seq * seq,
        "per_op_us": statistics.median(times["per_op"]) * 1e6,
        "fused_us": statistics.median(times["fused"]) * 1e6,
        "ratio": statistics.median(ratios),
        "q1": q1,
        "q3": q3,
        "runs": runs,
        "max_abs_diff": error,
    }


def break_even(rows: list[dict]) -> int | None:
    """The smallest score-element count from which every row's lower quartile is >= 1."""
    found = None
    for row in sorted(rows, key=lambda r: r["elements"], reverse=True):
        if row["q1"] < 1.0:
            break
        found = row["elements"]
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seqs", type=positive_ints, default=positive_ints("16,24,32,48,64,96,128,192,256"))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", type=float, default=0.05, help="seconds per batch of runs of one model")
    ap.add_argument(
        "--precision", choices=("float32", "bfloat16"), default="float32", help="the fused node's precision attribute"
    )
    ap.add_argument("--mask", choices=MASKS, default="zeros", help="the block's additive mask (module docstring)")
    ap.add_argument(
        "--baseline", choices=BASELINES, default="per-op", help="what the fused op is timed against (module docstring)"
    )
    args = ap.parse_args()
    print(
        f"H{args.heads} D{args.dim}, {args.threads} thread(s), {args.rounds} interleaved rounds, "
        f"ORT {ort.__version__}, kernels {quake_onnx.selected_isa()}, fused precision {args.precision}, "
        f"mask {args.mask}, baseline {args.baseline}"
        + (f" (engine: {attention_bf16_engine()})" if args.precision == "bfloat16" else "")
    )
    print(
        "| S | score elements | per-op (us) | fused (us) | fused speed-up median [q1, q3] | runs/round | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = []
    for seq in args.seqs:
        row = measure(
            args.heads, seq, args.dim, args.rounds, args.threads, args.budget, args.precision, args.mask, args.baseline
        )
        rows.append(row)
        print(
            f"| {row['seq']} | {row['elements']} | {row['per_op_us']:.1f} | {row['fused_us']:.1f} | "
            f"{row['ratio']:.3f} [{row['q1']:.3f}, {row['q3']:.3f}] | {row['runs']} | {row['max_abs_diff']:.1e} |",
            flush=True,
        )
    print(f"break-even: {break_even(rows)} score elements")


if __name__ == "__main__":
    main()
