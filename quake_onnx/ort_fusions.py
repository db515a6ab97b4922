"""ONNX Runtime's own graph fusions, applied offline before the rewrite.

Attention, SkipLayerNorm, BiasGelu, FastGelu and QuickGelu fusions match the
standard-op patterns the rewriter would otherwise break up; running them first
keeps them, and the rewriter then replaces the fused com.microsoft nodes."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import onnx
import onnxruntime as ort

from .modelio import load_external_data, load_graph

# Session-config keys documented in onnxruntime_session_options_config_keys.h.
_EXTERNAL_FILE = "session.optimized_model_external_initializers_file_name"
_EXTERNAL_MIN = "session.optimized_model_external_initializers_min_size_in_bytes"


class FusionError(Exception):
    """ONNX Runtime could not optimise, save or reload the model."""


def _library_path() -> Optional[str]:
    from ._library import get_library_path

    try:
        return get_library_path()
    except FileNotFoundError:
        return None


def session_options(level: ort.GraphOptimizationLevel) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # ORT's warnings would break the one-line error contract
    library = _library_path()
    if library:  # a model rewritten before may already hold com.quake nodes
        so.register_custom_ops_library(library)
    return so


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


LEVELS = {"extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
NCHWC_DOMAIN = "com.microsoft.nchwc"


def apply_ort_fusions(
    src: Path, workdir: Path, *, external: bool, original: Optional[onnx.ModelProto] = None, level: str = "extended"
) -> onnx.ModelProto:
    """The model at `src` after ONNX Runtime's CPU optimisations of `level`
    ("extended": the fusions; "all": plus the NCHWc conv layout, specific to
    this machine's CPU), loaded fully into memory. `original` (the model at
    `src`, external data not needed) lends its inferred types to the tensors
    that survive. Raises FusionError when ORT refuses to optimise it, to save
    it, or to load what it saved."""
    optimized = workdir / "ort_optimized.onnx"
    so = session_options(LEVELS[level])
    so.optimized_model_filepath = str(optimized)
    if external:  # without this ORT fails to save a model of 2 GB or more
        so.add_session_config_entry(_EXTERNAL_FILE, optimized.name + ".data")
        so.add_session_config_entry(_EXTERNAL_MIN, "1024")
    try:
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise FusionError(f"ONNX Runtime could not optimise the model: {_first_line(e)}") from e
    if not optimized.is_file():
        raise FusionError("ONNX Runtime did not save an optimised model")
    # ORT has written models it cannot load back (ops tied to its build);
    # rewriting such a file would hand the user a broken model.
    try:
        ort.InferenceSession(
            str(optimized),
            session_options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
            providers=["CPUExecutionProvider"],
        )
    except Exception as e:
        raise FusionError(f"ONNX Runtime cannot reload its own optimised model: {_first_line(e)}") from e
    try:
        model = load_graph(optimized)
        load_external_data(model, optimized)
    except Exception as e:
        raise FusionError(f"the optimised model does not load with onnx: {e}") from e
    prune_opset_imports(model)
    typed = inferred(original) if original is not None else None
    if typed is not None:
        carry_value_info(typed.graph, model.graph)
    type_blocked_tensors(model.graph)
    return model


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


def used_domains(model: onnx.ModelProto) -> set[str]:
    domains: set[str] = set()

    def visit(nodes) -> None:
        for node in nodes:
            domains.add(node.domain)
            for attr in node.attribute:
                if attr.HasField("g"):
                    visit(attr.g.node)
                for g in attr.graphs:
                    visit(g.node)

    visit(model.graph.node)
    for function in model.functions:
        visit(function.node)
        domains.add(function.domain)
    return domains


def prune_opset_imports(model: onnx.ModelProto) -> None:
    """ORT saves an import for every domain it knows (training, nchwc, aten...);
    only the ones the graph uses stay, so the file reads like the input did."""
    keep = used_domains(model) | {""}
    keep_ops = [o for o in model.opset_import if o.domain in keep or (o.domain == "ai.onnx" and "" in keep)]
    del model.opset_import[:]
    model.opset_import.extend(keep_ops)
