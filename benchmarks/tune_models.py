"""`quake-onnx tune` against the fixed rules, end to end (issue 13's targets).

    python benchmarks/tune_models.py [--models a,b] [--threads 1] [--budget 120] [--out DIR]

For every model (default: those of benchmarks/models.py, exported into its
cache, and the bundled sample models `sample:encoder_block`,
`sample:zoo/<name>`): tune it (quake_onnx.tune, the default budget and
tolerance unless told otherwise, on inputs of seed 0), then time in paired
rounds (benchmarks/models.py's method, quake_onnx.check.paired: alternating
rounds, two sessions per variant, median of the per-round ratios with their
quartiles) the original against `optimize` (default: order 2, level
extended), `optimize --ort-level all` and the tuned model, all on the same
inputs; then compare the tuned model's outputs with the original's on a
second input set (seed 1) it was not tuned on.

Per model the table has: tune's wall time, what it chose, the three
speedups (median [q1, q3]) and the verdicts of the targets:

- never slower: the tuned model's upper quartile is >= 1.00, and
  its upper quartile >= the median of the faster of default and level all;
- within tolerance: every output meets the tolerance on the second input set;
- in budget: tune took no longer than --budget (+5 %).

Needs what benchmarks/models.py needs for its models (torch, transformers;
the sample models need nothing more). Writes OUT/tune.json and OUT/tune.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import time
from pathlib import Path

import models as M  # benchmarks/models.py: a script's own folder is first on sys.path
import onnx
import onnxruntime as ort

import quake_onnx
from quake_onnx.bench.machine import describe
from quake_onnx.check import compare as cmp
from quake_onnx.check.inputs import generate, graph_inputs, load_inputs
from quake_onnx.check.paired import Paired
from quake_onnx.check.runner import Thresholds
from quake_onnx.tuning.space import within

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
SAMPLE_NAMES = ["sample:encoder_block"] + sorted(f"sample:zoo/{p.name}" for p in (SAMPLES / "zoo").iterdir())


def sample_path(name: str) -> Path:
    rel = name.split(":", 1)[1]
    return SAMPLES / (rel + ".onnx") if not rel.startswith("zoo/") else SAMPLES / rel / "model.onnx"


def feeds_pair(path: Path, seq: int) -> tuple[dict, dict]:
    """Inputs to tune on (seed 0) and a second set it never sees (seed 1), of the same shapes."""
    model = onnx.load(str(path), load_external_data=False)
    first = load_inputs(model, path, dims={"seq": seq, "batch": 1, "sequence": seq}).sets[0].feeds
    dims = {f"{k}:{axis}": n for k, v in first.items() for axis, n in enumerate(v.shape)}
    return first, generate(model, graph_inputs(model), dims=dims, seed=1)


def time_all(paths: dict, feeds: dict, threads: int, rounds: int, min_time: float, min_runs: int) -> dict:
    sessions = {v: [] for v in paths}
    for _ in range(2):
        for v, p in paths.items():
            sessions[v].append(M.session(p, threads, v != "original"))
    ms, runs, discarded, per_round = M.time_variants(sessions, feeds, rounds, min_time, min_runs)
    out = {}
    for v in paths:
        if v == "original":
            continue
        p = Paired(tuple(b / x for b, x in zip(per_round["original"], per_round[v])))
        out[v] = {**p.to_dict(), "ms": ms[v]}
    out["original_ms"] = ms["original"]
    out["discarded"] = discarded
    del sessions
    gc.collect()
    return out


def held_out(src: Path, tuned: Path, feeds: dict, thresholds: Thresholds) -> dict:
    ref = quake_onnx.InferenceSession(str(src))
    got = quake_onnx.InferenceSession(str(tuned))
    names = [o.name for o in ref.get_outputs()]
    outs = [cmp.compare(n, r, o).to_dict() for n, r, o in zip(names, ref.run(names, feeds), got.run(names, feeds))]
    worst = min((o["cosine"] for o in outs if not isinstance(o["cosine"], str)), default=None)
    return {"within": within(outs, thresholds), "min_cosine": worst, "outputs": outs}


def one(name: str, src: Path, args) -> dict:
    M.log(f"{name}: {src}")
    seq = args.seq
    tuning, second = feeds_pair(src, seq)
    out_dir = args.out / "models"
    out_dir.mkdir(parents=True, exist_ok=True)
    tuned = out_dir / f"{name.replace(':', '_').replace('/', '_')}.tuned.onnx"
    t0 = time.monotonic()
    _, report = quake_onnx.tune(
        src, tuned, inputs=[tuning], threads=args.threads, budget=args.budget, min_cosine=args.min_cosine
    )
    tune_seconds = time.monotonic() - t0
    (out_dir / (tuned.stem + ".json")).write_text(json.dumps(report, indent=1))
    M.log(f"  tuned in {tune_seconds:.0f} s: {report['result']}, {report['reason']}")
    paths = {"original": src}
    paths["default"], _ = M.quake_variant(src, 2, "extended")
    paths["all"], _ = M.quake_variant(src, 2, "all")
    paths["tuned"] = tuned
    speed = time_all(paths, tuning, args.threads, args.rounds, args.min_time, args.min_runs)
    thresholds = Thresholds(min_cosine=args.min_cosine)
    accuracy = held_out(src, tuned, second, thresholds)
    t, best = speed["tuned"], max(speed["default"]["median"], speed["all"]["median"])
    row = {
        "model": name,
        "threads": args.threads,
        "tune_seconds": round(tune_seconds, 1),
        "result": report["result"],
        "configuration": report["configuration"],
        "replaced": [
            f"{g['key']} ({g['choice']['order'] if g['choice']['method'] == 'quake' else 'exaq'})"
            for g in report["groups"]
            if g["decision"] == "replaced"
        ],
        "tune_speedup": report["final"]["speedup"],
        "not_tried": report["budget"]["not_tried"],
        "speed": speed,
        "held_out": {k: v for k, v in accuracy.items() if k != "outputs"},
        "never_slower": t["q3"] >= 1.0 and t["q3"] >= best,
        "within_tolerance": accuracy["within"],
        "in_budget": tune_seconds <= args.budget * 1.05,
    }
    M.log("  " + table_row(row))
    return row


def _s(x: dict) -> str:
    return f"{x['median']:.3f}x [{x['q1']:.3f}, {x['q3']:.3f}]"


def table_row(r: dict) -> str:
    s = r["speed"]
    cfg = r["configuration"]
    bf16 = " bf16" if cfg is not None and cfg.get("attention_precision") == "bfloat16" else ""
    chose = "original" if cfg is None else f"{cfg['ort_level']}" + (f", attention{bf16}" if cfg["attention"] else "")
    return (
        f"| {r['model']} | {r['threads']} | {r['tune_seconds']:.0f} | {chose}: {', '.join(r['replaced']) or '-'} "
        f"| {s['original_ms']:.2f} | {_s(s['default'])} | {_s(s['all'])} | **{_s(s['tuned'])}** "
        f"| {r['held_out']['min_cosine']} | {'yes' if r['never_slower'] else 'NO'} "
        f"| {'yes' if r['within_tolerance'] else 'NO'} | {'yes' if r['in_budget'] else 'NO'} |"
    )


HEADER = (
    "| model | threads | tune s | chosen | original ms | optimize (default) | optimize --ort-level all | tuned "
    "| held-out min cosine | never slower | within tolerance | in budget |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help=f"comma-separated, from {', '.join(list(M.SPECS) + SAMPLE_NAMES)}")
    ap.add_argument("--cache", type=Path, default=M.DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=Path("build/tune"))
    ap.add_argument("--threads", type=M.positive_int, default=1)
    ap.add_argument("--seq", type=M.positive_int, default=128, help="sequence length of text models")
    ap.add_argument("--budget", type=float, default=120.0, help="tune's budget per model (seconds)")
    ap.add_argument("--min-cosine", type=float, default=0.9999)
    ap.add_argument("--rounds", type=M.positive_int, default=10)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per variant per round")
    ap.add_argument("--min-runs", type=M.positive_int, default=3)
    ap.add_argument("--int8", action="store_true", help="also the int8 copies of models.py (quantize_dynamic)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",")] if args.models else M.FULL + SAMPLE_NAMES
    unknown = [n for n in names if n not in M.SPECS and n not in SAMPLE_NAMES]
    if unknown:
        ap.error(f"unknown model {', '.join(unknown)} (choose from {', '.join(list(M.SPECS) + SAMPLE_NAMES)})")
    args.cache.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    t_start = time.time()
    for name in names:
        if name in SAMPLE_NAMES:
            # optimize's variants go to the cache, never beside the samples
            src = args.cache / "samples" / name.split(":", 1)[1].replace("/", "_")
            src.mkdir(parents=True, exist_ok=True)
            path = sample_path(name)
            for f in path.parent.iterdir() if path.name == "model.onnx" else [path]:
                target = src / f.name
                if f.is_dir():
                    if not target.exists():
                        shutil.copytree(f, target)
                elif not target.exists():
                    target.write_bytes(f.read_bytes())
            rows.append(one(name, src / path.name, args))
            continue
        spec = M.SPECS[name]
        base = M.export(spec, args.cache)
        rows.append(one(name, base, args))
        if args.int8 and spec.int8:
            rows.append(one(f"{name}/int8", M.quantize(base), args))
    md = "\n".join(
        [
            f"quake-onnx tune against the fixed rules on {describe()}, ONNX Runtime {ort.__version__}",
            "",
            f"Budget {args.budget:g} s, tolerance cosine >= {args.min_cosine:g}, {args.threads} thread(s), "
            f"paired rounds {args.rounds} x {args.min_time:g} s; speedups are median [q1, q3] against the original.",
            "",
            HEADER,
            *[table_row(r) for r in rows],
            "",
        ]
    )
    (args.out / "tune.json").write_text(json.dumps({"rows": rows, "seconds": round(time.time() - t_start)}, indent=1))
    (args.out / "tune.md").write_text(md)
    M.log(md)
    M.log(f"total {time.time() - t_start:.0f} s; wrote {args.out / 'tune.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
