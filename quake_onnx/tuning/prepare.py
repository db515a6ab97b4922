"""The model side of `quake-onnx tune`: the optimizer's stages run once per ORT
level, the candidates found per configuration, grouped, and any variant the
search asks for built from them.

Each ORT level gets its oracle job once (pipeline/oracle.py: the graph to
rewrite, what ORT keeps, the types it lends). A configuration's candidates
are what its full rewrite replaces (pipeline/attention.py + op_rewrite.py,
attention blocks with no break-even floor when attention fusion is on: tune
measures instead; with a bf16 engine on this CPU, fused attention also at
precision bfloat16, a configuration of its own; the user's
attention_precision "float32" or "bfloat16" keeps only the fused
configurations of that precision). A variant is the same rewrite with `select`: only the
chosen groups' anchor nodes replaced, each at its group's order."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import onnx

from .. import modelio
from ..modelio import iter_graphs as _graphs
from ..optimize import all_ops
from ..pipeline.attention import fuse_attention
from ..pipeline.job import Job
from ..pipeline.op_rewrite import rewrite_ops
from ..pipeline.oracle import ort_oracle
from ..pipeline.shapes import state_shapes
from ..rewrite.context import Pick
from ..rewrite.report import Decision, Report
from .space import ATTENTION_RULES, Choice, Config, Group, Variant

# Weights: tensors read only as these ops' weight inputs (input 1 and on). The rules never look at
# their values, so tune takes their bytes out of the graphs it rewrites again and again (shape
# inference and every copy then skip them) and puts them back into each variant it runs.
_WEIGHT_OPS = frozenset(
    {
        "MatMul",
        "Gemm",
        "FusedMatMul",
        "Conv",
        "FusedConv",
        "ConvTranspose",
        "MatMulInteger",
        "QLinearMatMul",
        "QLinearConv",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "QGemm",
        "MatMulNBits",
    }
)
_WEIGHT_BYTES = 64 * 2**10
_SET_ASIDE = "quake-onnx-tune-set-aside"
# Ops ONNX Runtime's NCHWc transformer lays out (docs/optimize.md, "Conv nets"): without one,
# level "all" adds nothing the rewrite can use.
_LAYOUT_OPS = frozenset({"Conv", "MaxPool", "AveragePool"})


@dataclass
class Prepared:
    job: Job  # what load() made: the input, OUT, the files nothing may overwrite, the libraries
    bases: dict  # ORT level -> the Job after ort_oracle, nodes named, weights set aside
    configs: list  # Config, in the order the search takes them
    groups: list  # Group
    decisions: dict  # Config -> the full rewrite's decisions (every candidate, replaced or kept)
    attention_precision: str = "auto"  # the user's choice: auto, float32, bfloat16 (ATTENTION_PRECISIONS)
    engine: Optional[str] = None  # what runs precision bfloat16 here (bf16_engine), None: the float32 fallback
    notes: list = field(default_factory=list)  # what tune decided without measuring
    warnings: list = field(default_factory=list)
    weights: dict = field(default_factory=dict)  # ORT level -> {tensor name: bytes} set aside (set_weights_aside)

    def group(self, key: str) -> Group:
        return next(g for g in self.groups if g.key == key)


def bf16_engine() -> Optional[str]:
    """What runs com.quake Attention's precision "bfloat16" in the sessions tune
    opens (optimize --explain names the same): "AVX512-BF16", "NEON BFMMLA",
    "NEON BFDOT", or None for the float32 fallback (nothing to gain), no library
    to ask, or a QUAKE_ISA / QUAKE_NEON_BF16 value the library refuses."""
    try:
        from .._library import attention_bf16_engine

        engine = attention_bf16_engine()
    except (OSError, AttributeError, ValueError):  # ValueError: QUAKE_ISA / QUAKE_NEON_BF16 refused
        return None
    return None if engine in ("float32 fallback", "") else engine


def fused_precisions(attention_precision: str, engine: Optional[str]) -> tuple:
    """The precisions fused attention is tried at, as Config.bf16 values: "auto"
    float32, and bfloat16 too where a bf16 engine runs it; "float32" or
    "bfloat16" that one only (bfloat16 even on the float32 fallback: asked for)."""
    if attention_precision == "float32":
        return (False,)
    if attention_precision == "bfloat16":
        return (True,)
    return (False, True) if engine is not None else (False,)


def precision_note(attention_precision: str, engine: Optional[str]) -> str:
    """The one line the report's notes give about the fused attention's precision."""
    if attention_precision == "float32":
        return "attention precision bfloat16: not tried, float32 asked for"
    if attention_precision == "bfloat16":
        if engine is None:
            return (
                "attention precision bfloat16 as asked, but no bf16 engine runs it here (this CPU, or the kernel "
                "table QUAKE_ISA selects, has none): com.quake Attention runs it by its float32 fallback, so it "
                "was measured as float32"
            )
        return f"attention precision bfloat16 as asked (fused attention only at bfloat16), run here by {engine}"
    if engine is None:
        return (
            "attention precision bfloat16: not tried, no bf16 engine runs it here (this CPU, or the kernel table "
            "QUAKE_ISA selects, has none: the float32 fallback)"
        )
    return (
        "attention precision bfloat16: in the search (measured like the others, within the budget), "
        f"run here by {engine}"
    )


def prepare(job: Job, progress=lambda step: None, attention_precision: str = "auto") -> Prepared:
    """The configurations and groups of the model `job` loaded; `attention_precision`
    (ATTENTION_PRECISIONS, checked by tune) the precisions fused attention is tried at (fused_precisions)."""
    bases: dict = {}
    notes: list = []
    engine = bf16_engine()
    bf16_noted = False
    if _has_layout_ops(job.model.graph):
        progress("ONNX Runtime's level all (NCHWc layout)")
        laid = ort_oracle(_fork(job, ort_level="all"))
        if laid.laid_out:
            _name_nodes(laid.model)
            bases["all"] = laid
        else:
            notes.append("ORT level all: ONNX Runtime lays out no convolution of this model, so it is not tried")
    else:
        notes.append("ORT level all: the model has no convolution or pool for ONNX Runtime's NCHWc layout")
    progress("ONNX Runtime's fusions (level extended)")
    base = ort_oracle(_fork(job, ort_level="extended"))
    renamed = _name_nodes(base.model)
    if renamed:
        notes.append(f"{renamed} unnamed or duplicate node name(s) given a name, to address them")
    bases = {"extended": base, **bases}
    weights = {level: set_weights_aside(b.model) for level, b in bases.items()}

    configs: list = []
    decisions: dict = {}
    for level, b in bases.items():
        progress(f"candidates at ORT level {level}")
        probe = discover(b, Config(level, attention=True, glu=True))
        fused = any(d.replaced and d.rule in ATTENTION_RULES for d in probe.decisions)
        glu = any(d.replaced and d.rule == "glu" for d in probe.decisions)
        precisions = fused_precisions(attention_precision, engine)
        for attention, bf16 in [(False, False), *((True, p) for p in precisions)] if fused else [(None, False)]:
            for gated in (True, False) if glu else (None,):
                cfg = Config(level, attention, gated, bf16)
                configs.append(cfg)
                plain = (attention is None or attention) and (gated is None or gated) and not bf16
                decisions[cfg] = probe.decisions if plain else discover(b, cfg).decisions
        if fused and not bf16_noted:
            bf16_noted = True
            notes.append(precision_note(attention_precision, engine))
    groups = _group(bases, decisions)
    return Prepared(
        job=job,
        bases=bases,
        configs=configs,
        groups=groups,
        decisions=decisions,
        attention_precision=attention_precision,
        engine=engine,
        notes=notes,
        warnings=list(dict.fromkeys(w for b in bases.values() for w in b.warnings)),
        weights=weights,
    )


def _fork(job: Job, **settings) -> Job:
    """A copy of the job with other settings; the model is shared (the stages replace it, never change it)."""
    return dataclasses.replace(
        job,
        settings=dataclasses.replace(job.settings, **settings),
        report=Report(),
        warnings=list(job.warnings),
        kept=dict(job.kept),
        type_hints=list(job.type_hints),
    )


def _has_layout_ops(graph: onnx.GraphProto) -> bool:
    for node in graph.node:
        if node.op_type in _LAYOUT_OPS and node.domain in ("", "ai.onnx"):
            return True
        for attr in node.attribute:
            if attr.HasField("g") and _has_layout_ops(attr.g):
                return True
            if any(_has_layout_ops(g) for g in attr.graphs):
                return True
    return False


def _name_nodes(model: onnx.ModelProto) -> int:
    """Gives every unnamed node, and every node whose name an earlier node
    has, a name of its own (in every graph): variants choose nodes by name."""
    taken = {n.name for g in _graphs(model.graph) for n in g.node if n.name}
    seen: set = set()
    renamed = 0
    for graph in _graphs(model.graph):
        for i, node in enumerate(graph.node):
            if node.name and node.name not in seen:
                seen.add(node.name)
                continue
            k = 0
            while f"{node.op_type}_{i}_{k}" in taken:
                k += 1
            node.name = f"{node.op_type}_{i}_{k}"
            taken.add(node.name)
            seen.add(node.name)
            renamed += 1
    return renamed


def _settings_for(job: Job, cfg: Config, select: Optional[tuple]):
    from ..rewrite.engine import BREAK_EVEN, one_attention_floor

    ops = set(all_ops())
    if cfg.attention is False:
        ops.discard("attention")
    if cfg.glu is False:
        ops.discard("glu")
    floors = one_attention_floor(BREAK_EVEN, 0) if cfg.attention else dict(BREAK_EVEN)  # 0: measured instead
    return dataclasses.replace(
        job.settings,
        ops=frozenset(ops),
        floors=tuple(sorted(floors.items())),
        ort_level=cfg.level,
        select=select,
        attention_precision="bfloat16" if cfg.bf16 else "float32",
    )


def discover(base: Job, cfg: Config) -> Report:
    """Every candidate of a configuration, as its full rewrite decides it."""
    job = _fork(base)
    job.settings = _settings_for(base, cfg, None)
    if cfg.attention is not False:  # off, the stage would only report "not among the selected ops"
        job = fuse_attention(job)
    return rewrite_ops(job).report


def build(prep: Prepared, variant: Variant) -> Job:
    """The job holding `variant`'s model, whole (shapes stated; exaq clips still 0)."""
    cfg = variant.config
    base = prep.bases[cfg.level]
    picks = {}
    fused = False
    for key, choice in variant.picks:
        group = prep.group(key)
        fused = fused or group.rule in ATTENTION_RULES
        for name in group.nodes.get(cfg, []):
            picks[(group.rule, name)] = Pick(choice.order, exaq_attrs(choice))
    job = _fork(base)
    job.settings = _settings_for(base, cfg, tuple(sorted(picks.items())))
    if fused:  # with no attention block picked the stage would change nothing
        job = fuse_attention(job)
    job = state_shapes(rewrite_ops(job))
    if job.model is base.model:
        job.model = _copy(job.model)
    put_weights_back(job.model, prep.weights.get(cfg.level, {}))
    return job


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def set_weights_aside(model: onnx.ModelProto) -> dict:
    """Takes the bytes of every weight (see _WEIGHT_OPS) of 64 KiB or more out
    of `model`, as modelio.strip_large_tensors does for the biggest tensors,
    under a marker of its own; returns them by name."""
    readers: dict = {}
    for graph in _graphs(model.graph):
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name:
                    readers.setdefault(name, set()).add(node.op_type if i >= 1 and node.op_type in _WEIGHT_OPS else "")
    stash: dict = {}
    for graph in _graphs(model.graph):
        for tensor in graph.initializer:
            if (
                tensor.HasField("raw_data")
                and len(tensor.raw_data) >= _WEIGHT_BYTES
                and "" not in readers.get(tensor.name, {""})
                and tensor.name not in stash
            ):
                stash[tensor.name] = tensor.raw_data
                tensor.ClearField("raw_data")
                del tensor.external_data[:]
                entry = tensor.external_data.add()
                entry.key, entry.value = "location", _SET_ASIDE
                tensor.data_location = onnx.TensorProto.EXTERNAL
    return stash


def put_weights_back(model: onnx.ModelProto, stash: dict) -> None:
    for tensor in modelio.iter_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL and any(
            e.key == "location" and e.value == _SET_ASIDE for e in tensor.external_data
        ):
            tensor.raw_data = stash[tensor.name]
            tensor.ClearField("data_location")
            del tensor.external_data[:]


def exaq_attrs(choice: Choice) -> tuple:
    if choice.method != "exaq":
        return ()
    return (("method", "exaq"), ("bits", int(choice.bits)), ("clip", 0.0))


# ---------------------------------------------------------------------- groups


def _shapes(model: onnx.ModelProto, hints) -> dict:
    """Tensor name -> shape (sizes, symbolic names, "?")."""
    stash = modelio.strip_large_tensors(model)
    try:
        try:
            from ..schemas import register_schemas

            register_schemas()
            typed = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        except Exception:
            typed = model
    finally:
        modelio.restore_large_tensors(model, stash)
    out: dict = {}
    infos = list(hints)
    for g in _graphs(typed.graph):
        infos += list(g.value_info) + list(g.input) + list(g.output)
        for t in g.initializer:
            out[t.name] = list(t.dims)
    for vi in infos:
        t = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and t.HasField("shape") and vi.name not in out:
            out[vi.name] = [_dim(d) for d in t.shape.dim]
    return out


def _dim(d) -> object:
    """A dimension for a group key: its size, its name, or "?" (unknown, or a name
    onnx's inference made up: unk__N differ between tensors of the same shape)."""
    if d.HasField("dim_value"):
        return d.dim_value
    return "?" if not d.dim_param or d.dim_param.startswith("unk__") else d.dim_param


def _group(bases: dict, decisions: dict) -> list:
    shapes = {level: _shapes(b.model, b.type_hints) for level, b in bases.items()}
    nodes = {level: {n.name: n for g in _graphs(b.model.graph) for n in g.node} for level, b in bases.items()}
    groups: dict = {}
    for cfg, found in decisions.items():
        for d in found:
            if not d.replaced:
                continue
            shape = _anchor_shape(d, nodes[cfg.level], shapes[cfg.level])
            key = group_key(d, shape)
            g = groups.get(key)
            if g is None:
                g = groups[key] = Group(key, d.rule, d.op_type, d.graph, shape)
            g.nodes.setdefault(cfg, []).append(d.node)
    return list(groups.values())


def _anchor_shape(d: Decision, nodes: dict, shapes: dict) -> Optional[list]:
    node = nodes.get(d.node)
    if node is None or not node.input:
        return None
    return shapes.get(node.input[0])


def group_key(d: Decision, shape: Optional[list]) -> str:
    text = "?" if shape is None else "[" + ",".join(str(x) for x in shape) + "]"
    return f"{d.rule} {d.op_type} {text}" + ("" if d.graph == "main" else f" in {d.graph}")
