"""Stage 2: ask ONNX Runtime what it fuses, and fix the graph to rewrite.

ORT optimises a copy offline (ort_fusions.py). At the default level its
graph is the oracle, not what gets rewritten: a Softmax it folds into a fused
attention kernel is kept (replacing it would cost ORT the whole kernel), and
its element types of tensors onnx cannot infer are lent to the rewrite; the
original is rewritten, so ORT redoes its fusions when it loads the result
and the output stays standard ONNX plus com.quake. At level "all" ORT's
graph (with its NCHWc conv layout, tied to this CPU) is what gets rewritten."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import onnx

from .. import modelio, sessions
from ..ort_fusions import FusionError, apply_ort_fusions, has_nchwc_layout
from .job import Job, OptimizeError

NCHWC_WARNING = (
    "ORT level 'all': the model holds ONNX Runtime's NCHWc conv layout (com.microsoft.nchwc ops), "
    "blocked for this machine's CPU vector width and this ONNX Runtime; run it on the same kind of CPU "
    "with the same ONNX Runtime, and re-optimise it for any other"
)

# ORT's fused attention kernels compute their softmax inside; replacing the
# Softmax would break the pattern and cost the whole fused kernel.
ATTENTION_OPS = frozenset(
    {
        "Attention",
        "MultiHeadAttention",
        "GroupQueryAttention",
        "PackedAttention",
        "PackedMultiHeadAttention",
        "DecoderAttention",
        "DecoderMaskedMultiHeadAttention",
        "DecoderMaskedSelfAttention",
        "LongformerAttention",
        "QAttention",
        "SparseAttention",
    }
)


def ort_oracle(job: Job) -> Job:
    """job.model becomes the graph to rewrite, its external data read; sets
    kept, type_hints, laid_out and the warnings. An input ORT refuses even
    unoptimised is bad input (OptimizeError, exit 2); any other failure of
    ORT's optimiser is a warning and nothing is kept for it."""
    fused = None
    if job.settings.ort_fusions:
        with tempfile.TemporaryDirectory(prefix="quake-onnx-") as tmp:
            try:
                fused = ort_optimized(
                    job.model, job.src, Path(tmp), job.had_external, job.settings.ort_level, job.libraries
                )
            except FusionError as e:
                refuse_bad_input(job.model, job.src, job.libraries)
                job.warnings.append(f"{e}; rewrote the model without ONNX Runtime's fusions")
    if fused is not None and job.settings.ort_level == "extended":
        absorbed = absorbed_by_ort(job.model, fused)
        if any(not n.name for n in job.model.graph.node if n.output and n.output[0] in absorbed):
            job.model = _copy(job.model)  # naming them must not touch the caller's model
        job.kept = _keep_absorbed(job.model, absorbed)
        job.type_hints = list(fused.graph.value_info)
        fused = None
    if fused is None:
        if job.src is not None:
            modelio.load_external_data(job.model, job.src)
    else:
        widened = float16_widened(job.model, fused)
        if widened:
            job.warnings.append(widened)
        job.model = fused
    job.laid_out = has_nchwc_layout(job.model)
    if job.laid_out:
        job.warnings.append(NCHWC_WARNING)
    return job


def ort_optimized(
    model: onnx.ModelProto, src: Optional[Path], work: Path, external: bool, level: str, libraries: Sequence[str]
) -> onnx.ModelProto:
    """ORT's optimised graph of `model` (read from `src` when there is a file)."""
    ort_dir = work / "ort"
    ort_dir.mkdir()
    if src is None:
        # ORT needs a file to read and, for big models, a folder for the data.
        src = ort_dir / "input.onnx"
        external = external or modelio.needs_external_data(model)
        if external:
            _save_copy(model, src)
        else:
            onnx.save_model(model, str(src))
    return apply_ort_fusions(src, ort_dir, external=external, original=model, level=level, libraries=libraries)


def refuse_bad_input(model: onnx.ModelProto, src: Optional[Path], libraries: Sequence[str]) -> None:
    """Raises the exit-2 error when ONNX Runtime refuses the input itself."""
    if src is None and modelio.needs_external_data(model):
        return  # no file to open, and too big for bytes: ORT's verdict on the result must do
    try:
        sessions.open_session(src if src is not None else model.SerializeToString(), sessions.options(libraries))
    except Exception as e:
        raise OptimizeError(f"the input model does not load in ONNX Runtime: {sessions.one_line(e)}") from None


def absorbed_by_ort(original: onnx.ModelProto, fused: onnx.ModelProto) -> dict[str, str]:
    """Softmax/LogSoftmax nodes of the original's main graph that ONNX Runtime
    fuses into an attention kernel: output names of the original gone from
    ORT's graph while ORT's graph holds an attention op. Maps each such
    node's output name to that op's type."""
    attention = sorted({n.op_type for n in fused.graph.node if n.domain == "com.microsoft"} & ATTENTION_OPS)
    if not attention:
        return {}
    alive = {t for n in fused.graph.node for t in (*n.input, *n.output)} | {o.name for o in fused.graph.output}
    return {
        n.output[0]: attention[0]
        for n in original.graph.node
        if n.op_type in ("Softmax", "LogSoftmax") and n.domain in ("", "ai.onnx") and n.output[0] not in alive
    }


def float16_widened(before: onnx.ModelProto, after: onnx.ModelProto) -> str:
    """A warning when ONNX Runtime's level-"all" graph holds float16 weights
    of `before` as float32 (its NCHWc convs run in float32, so it casts their
    weights, and Casts at the edges keep the model's float16 inputs and
    outputs): the written model then has float32 weights while looking like a
    float16 one. "" when nothing was widened."""

    def weights(model: onnx.ModelProto, data_type: int) -> tuple[int, int]:
        tensors = [t for t in model.graph.initializer if t.data_type == data_type]
        return len(tensors), sum(math.prod(t.dims) for t in tensors)

    half_before, half_elems = weights(before, onnx.TensorProto.FLOAT16)
    half_after, _ = weights(after, onnx.TensorProto.FLOAT16)
    float_before, _ = weights(before, onnx.TensorProto.FLOAT)
    float_after, _ = weights(after, onnx.TensorProto.FLOAT)
    if half_before == 0 or half_after >= half_before or float_after <= float_before:
        return ""
    return (
        f"ORT level 'all' keeps {half_after} of the model's {half_before} float16 weights as float16: ONNX Runtime's "
        "NCHWc convs run in float32 and it stores their weights as float32 (the model's inputs and outputs stay "
        f"float16, those weights take twice the memory: {_size(half_elems * 2)} in float16 before); "
        "--ort-level extended keeps them float16"
    )


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MB" if n_bytes >= 2**20 else f"{n_bytes / 1024:.1f} KB"


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _keep_absorbed(model: onnx.ModelProto, absorbed: dict[str, str]) -> dict[str, str]:
    """Names the absorbed nodes (naming unnamed ones in `model`) so the pass
    can skip them; returns node name -> attention op type."""
    kept: dict[str, str] = {}
    used = {n.name for n in model.graph.node}
    for i, node in enumerate(model.graph.node):
        if node.output and node.output[0] in absorbed:
            if not node.name:
                node.name = next(
                    f"{node.op_type}_{i}_{k}" for k in range(len(used) + 1) if f"{node.op_type}_{i}_{k}" not in used
                )
                used.add(node.name)
            kept[node.name] = absorbed[node.output[0]]
    return kept


def _save_copy(model: onnx.ModelProto, path: Path) -> None:
    from ..writes import EXTERNAL_THRESHOLD

    # onnx.save with external data empties the tensors it moves out; the
    # caller's model must stay whole for the fallback and for the user.
    onnx.save_model(
        _copy(model),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=EXTERNAL_THRESHOLD,
    )
