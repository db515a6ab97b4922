"""End to end with com.quake Attention at precision "bfloat16" (issue 16), against ONNX Runtime float32.

    python benchmarks/bf16_models.py [--models minilm,whisper-tiny-enc] [--seqs 128,512] [--threads 1,2]
                                     [--cache DIR] [--out DIR] [--quick]

For each model (exported by benchmarks/models.py into --cache, same sessions,
inputs and paired interleaved timing; see its docstring), four variants:

  base      the exported model under ORT_ENABLE_ALL (float32)
  o2        quake_onnx.optimize(order=2) with its defaults
  o2-f32    order 2, attention fused in float32 even at symbolic sizes (min_elements=0)
  o2-bf16   order 2, attention fused at precision "bfloat16" (min_elements=0)

The exports have a symbolic batch and sequence, so optimize's default floors
keep their encoder attention per op (docs/optimize.md, "Attention fusion");
min_elements=0 is how a user asks for the fused block, and `tune` reaches it
the same way. Reported per model, sequence and thread count: each variant's
fastest round median (ms), its paired speedup over base with quartiles, and
the output's cosine and max |difference| to base on the timing input (the
real-sentence accuracy table is benchmarks/bf16_accuracy.py's). Prints the
bf16 engine this CPU runs (`optimize --explain` names it the same way).
Writes OUT/bf16_models.md and OUT/bf16_models.json (default OUT: build/bf16_models).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models as M  # noqa: E402  (benchmarks/models.py: exports, sessions, paired timing)

from quake_onnx._library import attention_bf16_engine  # noqa: E402

VARIANTS = {
    "o2": {},
    "o2-f32": {"min_elements": 0},
    "o2-bf16": {"min_elements": 0, "attention_precision": "bfloat16"},
}


def agreement(paths: dict, seq, threads: int) -> dict:
    """Cosine and max |difference| of each variant's first output to base's on the timing input."""
    feeds = M.feeds_for(paths["base"], seq)
    ref = M.session(paths["base"], threads, False).run(None, feeds)[0]
    out = {}
    for v, p in paths.items():
        if v == "base":
            continue
        m = M.cmp.compare("output", ref, M.session(p, threads, True).run(None, feeds)[0], scores=False)
        out[v] = {"cosine": m.cosine, "max_abs": m.max_abs_error}
    return out


def markdown(rows: list[dict], engine: str) -> str:
    lines = [
        f"bf16 engine on this CPU: {engine}",
        "",
        "| model | seq | threads | ORT ms | "
        + " | ".join(f"{v} ms (speedup, quartiles)" for v in VARIANTS)
        + " | o2-bf16 cosine to ORT | o2-f32 cosine |",
        "|---|---|---|---|" + "---|" * len(VARIANTS) + "---|---|",
    ]
    for r in rows:
        cells = [r["label"], str(r["seq"] or "-"), str(r["threads"]), f"{r['base_ms']:.2f}"]
        for v in VARIANTS:
            q = r["quartiles"][v]
            cells.append(f"{r['ms'][v]:.2f} ({r['speedup'][v]:.3f}x, {q[0]:.2f}-{q[1]:.2f})")
        cells += [f"{r['agreement']['o2-bf16']['cosine']:.7f}", f"{r['agreement']['o2-f32']['cosine']:.7f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="minilm,whisper-tiny-enc")
    ap.add_argument("--seqs", type=M.positive_ints, default=[128, 512], help="text models only")
    ap.add_argument("--threads", type=M.positive_ints, default=[1, 2])
    ap.add_argument("--cache", type=Path, default=M.DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=Path("build/bf16_models"))
    ap.add_argument("--rounds", type=M.positive_int, default=10)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per variant per round")
    ap.add_argument("--instances", type=M.positive_int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny-bert, seq 32, 1 thread, 2 rounds (smoke test)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if args.quick:
        names, args.seqs, args.threads = ["tiny-bert"], [32], [1]
        args.rounds, args.min_time, args.instances = 2, 0.05, 1
    unknown = [n for n in names if n not in M.SPECS]
    if unknown:
        ap.error(f"unknown model {', '.join(unknown)} (choose from {', '.join(M.SPECS)})")

    engine = attention_bf16_engine()
    M.log(f"machine: {M.machine()}; bf16 engine: {engine}")
    args.cache.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        spec = M.SPECS[name]
        base = M.export(spec, args.cache)
        paths, infos = {"base": base}, {}
        for v, options in VARIANTS.items():
            paths[v], infos[v] = M.quake_variant(base, 2, spec.ort_level, **options)
            M.log(f"  {name} {v}: {infos[v]['counts']}")
        seqs = args.seqs if spec.kind == "text" else [None]
        timing = (args.rounds, args.min_time, 3, 4, args.instances)  # rounds, min_time, min_runs, retries, instances
        speed = M.speed(spec, "fp32", paths, infos, seqs, args.threads, *timing)
        for r in speed:
            rows.append(
                {
                    "model": name,
                    "label": spec.label,
                    "seq": r.seq,
                    "threads": r.threads,
                    "base_ms": r.base_ms,
                    "ms": r.ms,
                    "speedup": {v: r.speedup(v) for v in VARIANTS},
                    "quartiles": {v: r.quartiles(v) for v in VARIANTS},
                    "replaced": r.replaced,
                    "load": r.load,
                    "agreement": agreement(paths, r.seq, r.threads),
                }
            )
    results = {"machine": M.machine(), "engine": engine, "command": " ".join(sys.argv), "rows": rows}
    (args.out / "bf16_models.json").write_text(json.dumps(results, indent=1))
    table = markdown(rows, engine)
    (args.out / "bf16_models.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
