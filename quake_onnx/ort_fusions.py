"""ONNX Runtime's own graph fusions, applied offline before the rewrite.

Attention, SkipLayerNorm, BiasGelu, FastGelu and QuickGelu fusions match the
standard-op patterns the rewriter would otherwise break up; running them first
keeps them, and the rewriter then replaces the fused com.microsoft nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import onnx
import onnxruntime as ort

from . import sessions
from .modelio import load_external_data, load_graph

# Session-config keys documented in onnxruntime_session_options_config_keys.h.
_EXTERNAL_FILE = "session.optimized_model_external_initializers_file_name"
_EXTERNAL_MIN = "session.optimized_model_external_initializers_min_size_in_bytes"


class FusionError(Exception):
    """ONNX Runtime could not optimise, save or reload the model."""


def session_options(level: ort.GraphOptimizationLevel, libraries: Sequence[str] = ()) -> ort.SessionOptions:
    """One thread, ORT's logging silenced (its lines would break the one-line
    error contract), `libraries` registered (sessions.libraries_for)."""
    return sessions.options(libraries, level=level)


LEVELS = {"extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
NCHWC_DOMAIN = "com.microsoft.nchwc"


def apply_ort_fusions(
    src: Path,
    workdir: Path,
    *,
    external: bool,
    original: Optional[onnx.ModelProto] = None,
    level: str = "extended",
    libraries: Sequence[str] = (),
) -> onnx.ModelProto:
    """The model at `src` after ONNX Runtime's CPU optimisations of `level`
    ("extended": the fusions; "all": plus the NCHWc conv layout, specific to
    this machine's CPU), loaded fully into memory. `original` (the model at
    `src`, external data not needed) lends its inferred types to the tensors
    that survive. `libraries`: the custom-op libraries its sessions need.
    Raises FusionError when ORT refuses to optimise it, to save
    it, or to load what it saved."""
    optimized = workdir / "ort_optimized.onnx"
    so = session_options(LEVELS[level], libraries)
    so.optimized_model_filepath = str(optimized)
    if external:  # without this ORT fails to save a model of 2 GB or more
        so.add_session_config_entry(_EXTERNAL_FILE, optimized.name + ".data")
        so.add_session_config_entry(_EXTERNAL_MIN, "1024")
    try:
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise FusionError(f"ONNX Runtime could not optimise the model: {sessions.one_line(e)}") from e
    if not optimized.is_file():
        raise FusionError("ONNX Runtime did not save an optimised model")
    # ORT has written models it cannot load back (ops tied to its build);
    # rewriting such a file would hand the user a broken model.
    try:
        ort.InferenceSession(
            str(optimized),
            session_options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL, libraries),
            providers=["CPUExecutionProvider"],
        )
    except Exception as e:
        raise FusionError(f"ONNX Runtime cannot reload its own optimised model: {sessions.one_line(e)}") from e
    try:
        model = load_graph(optimized)
    except Exception as e:
        raise FusionError(f"the optimised model does not load with onnx: {e}") from e
    prune_opset_imports(model)
    typed = inferred(original) if original is not None else None
    if typed is not None:
        carry_value_info(typed.graph, model.graph)
    if original is not None and uninferable_domains(original):
        model.graph.value_info.extend(ort_types(model, optimized, libraries))
    type_blocked_tensors(model.graph)
    try:
        load_external_data(model, optimized)
    except Exception as e:
        raise FusionError(f"the optimised model does not load with onnx: {e}") from e
    return model


# Domains whose ops onnx's shape inference knows (com.microsoft and com.quake
# through the schemas this package and onnxruntime register).
_INFERABLE = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "com.quake"})
_T = onnx.TensorProto
# ONNX Runtime's names of element types (NodeArg.type).
_ORT_TYPES = {
    "tensor(float)": _T.FLOAT,
    "tensor(float16)": _T.FLOAT16,
    "tensor(bfloat16)": _T.BFLOAT16,
    "tensor(double)": _T.DOUBLE,
    "tensor(bool)": _T.BOOL,
    "tensor(int8)": _T.INT8,
    "tensor(uint8)": _T.UINT8,
    "tensor(int16)": _T.INT16,
    "tensor(uint16)": _T.UINT16,
    "tensor(int32)": _T.INT32,
    "tensor(uint32)": _T.UINT32,
    "tensor(int64)": _T.INT64,
    "tensor(uint64)": _T.UINT64,
}


def uninferable_domains(model: onnx.ModelProto) -> set[str]:
    """Domains of the model's nodes that onnx's shape inference cannot see through."""
    return sessions.domains(model) - _INFERABLE


def ort_types(model: onnx.ModelProto, path: Path, libraries: Sequence[str]) -> list[onnx.ValueInfoProto]:
    """ONNX Runtime's element types and shapes of the main graph's untyped
    tensors (what follows another library's custom op, which onnx cannot
    infer): a copy of `model` (saved at `path`, data beside it) lists them
    as outputs and ORT states their types. Empty when ORT cannot say."""
    known = {v.name for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    known |= {t.name for t in model.graph.initializer}
    wanted = [o for n in model.graph.node for o in n.output if o and o not in known]
    if not wanted:
        return []
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in wanted)  # no type: ORT states it
    probe_path = path.with_name("types_probe.onnx")  # beside `path`: its data file resolves the same
    try:
        probe_path.write_bytes(probe.SerializeToString())
        outputs = sessions.open_session(
            probe_path, session_options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL, libraries)
        ).get_outputs()
    except Exception:
        return []
    finally:
        probe_path.unlink(missing_ok=True)
    # Element types only: ORT states [] for a shape it does not know, which
    # would read as a scalar (and below every size floor).
    wanted_set = set(wanted)
    return [
        onnx.helper.make_tensor_value_info(out.name, _ORT_TYPES[out.type], None)
        for out in outputs
        if out.name in wanted_set and out.type in _ORT_TYPES
    ]


def type_blocked_tensors(graph: onnx.GraphProto) -> None:
    """States float as the element type of the tensors ORT's NCHWc layout creates.

    Its com.microsoft.nchwc ops (Conv, pools, ReorderInput...) are float-only
    and their outputs get new names ("reorder_token_7"), so neither the
    original's types nor onnx inference reach them, nor the activations
    after them (QuickGelu on a blocked tensor), which the rewriter would then
    leave as "element type unknown". Elementwise ops pass their input's type on."""
    from .rewrite.layout import LAYOUT_PRESERVING

    float_types: set[str] = set()
    known = {v.name for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    known |= {t.name for t in graph.initializer}
    for node in graph.node:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        if domain == NCHWC_DOMAIN:
            outputs = list(node.output)
        elif (domain, node.op_type) in LAYOUT_PRESERVING and any(i in float_types for i in node.input):
            outputs = list(node.output[:1])
        else:
            continue
        for name in outputs:
            if name and name not in float_types:
                float_types.add(name)
                if name not in known:
                    info = graph.value_info.add()
                    info.name = name
                    info.type.tensor_type.elem_type = onnx.TensorProto.FLOAT


def has_nchwc_layout(model: onnx.ModelProto) -> bool:
    return any(node.domain == NCHWC_DOMAIN for node in model.graph.node)


def inferred(model: onnx.ModelProto) -> Optional[onnx.ModelProto]:
    """The model with onnx-inferred value_info, or None when inference fails
    (a protobuf too big to pass to it, an op whose inference raises)."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        return None


def carry_value_info(source: onnx.GraphProto, target: onnx.GraphProto) -> None:
    """Copies the types of `source`'s tensors onto the same-named tensors of
    `target` that have none.

    ORT saves no value_info, and onnx cannot infer through com.microsoft ops
    (FusedMatMul, SkipLayerNormalization...), so without this the Softmax after
    a fused MatMul has no known element type and the rewriter must keep it.
    A tensor that survives ORT's fusions under its name is the same tensor."""
    known = {v.name for v in list(target.value_info) + list(target.input) + list(target.output)}
    known |= {t.name for t in target.initializer}
    produced = {name for node in target.node for name in node.output}
    for info in source.value_info:
        if info.name in produced and info.name not in known:
            target.value_info.append(info)
    subgraphs = {}
    for node in source.node:
        for attr in node.attribute:
            if attr.HasField("g") and node.name:
                subgraphs[(node.name, attr.name)] = attr.g
    for node in target.node:
        for attr in node.attribute:
            if attr.HasField("g") and (node.name, attr.name) in subgraphs:
                carry_value_info(subgraphs[(node.name, attr.name)], attr.g)


def prune_opset_imports(model: onnx.ModelProto) -> None:
    """ORT saves an import for every domain it knows (training, nchwc, aten...);
    only the ones the graph uses stay, so the file reads like the input did."""
    keep = sessions.domains(model, imports=False) | {""}
    keep_ops = [o for o in model.opset_import if o.domain in keep or (o.domain == "ai.onnx" and "" in keep)]
    del model.opset_import[:]
    model.opset_import.extend(keep_ops)
