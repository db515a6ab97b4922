"""The model optimizer behind `quake-onnx optimize`: load, let ONNX Runtime
fuse, rewrite exponential non-linearities to com.quake, write atomically."""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import onnx
import onnxruntime as ort

from . import exaq, modelio, sessions, writes
from .modelio import ModelFileError
from .ort_fusions import LEVELS, FusionError, apply_ort_fusions, has_nchwc_layout
from .rewrite.report import Report

# The pass's own list when it is importable; the same names otherwise, so
# option checking works even where the pass cannot be loaded.
_KNOWN_OPS = frozenset({"softmax", "logsoftmax", "gelu", "silu", "sigmoid", "exp"})
ORDERS = (1, 2, 3)

ModelLike = Union[str, os.PathLike, onnx.ModelProto]


class OptimizeError(ModelFileError):
    """A failure the CLI reports as one line; exit_code 2 for bad input or
    options, 1 for a failure while optimising or writing."""


def all_ops() -> frozenset[str]:
    try:
        from .rewrite.passes import ALL_OPS
    except ImportError:
        return _KNOWN_OPS
    return frozenset(ALL_OPS)


def parse_ops(ops: Optional[Iterable[str]]) -> frozenset[str]:
    """Op names, case-insensitive; a comma-separated string is accepted too."""
    known = all_ops()
    if ops is None:
        return known
    if isinstance(ops, str):
        ops = ops.split(",")
    chosen = {o.strip().lower() for o in ops if o.strip()}
    unknown = sorted(chosen - known)
    if unknown:
        raise OptimizeError(f"unknown op {', '.join(unknown)} (choose from {', '.join(sorted(known))})")
    if not chosen:
        raise OptimizeError(f"no op selected (choose from {', '.join(sorted(known))})")
    return frozenset(chosen)


NCHWC_WARNING = (
    "ORT level 'all': the model holds ONNX Runtime's NCHWc conv layout (com.microsoft.nchwc ops), "
    "blocked for this machine's CPU vector width and this ONNX Runtime; run it on the same kind of CPU "
    "with the same ONNX Runtime, and re-optimise it for any other"
)


def _rewrite(
    model: onnx.ModelProto, order: int, ops: frozenset[str], skip: frozenset[str], keep_layout: bool = True,
    min_elements: Optional[dict] = None, type_hints: Sequence[onnx.ValueInfoProto] = (),
):
    try:
        from .rewrite.passes import rewrite_model
    except ImportError as e:
        raise OptimizeError(f"the rewrite pass is not available: {e}", exit_code=1) from None
    try:
        from .schemas import register_schemas
    except ImportError:
        pass
    else:
        register_schemas()
    return rewrite_model(
        model, order=order, ops=ops, skip_nodes=skip, keep_conv_layout=keep_layout, min_elements=min_elements or {},
        type_hints=type_hints,
    )


def _rewrite_light(
    model: onnx.ModelProto, order: int, ops: frozenset[str], skip: frozenset[str], keep_layout: bool,
    min_elements: Optional[dict] = None, type_hints: Sequence[onnx.ValueInfoProto] = (),
):
    """The rewrite with big tensors' bytes set aside (see strip_large_tensors),
    and the inferred shapes stated on the result. `model` is as it was after."""
    stash = modelio.strip_large_tensors(model)
    try:
        try:
            rewritten, report = _rewrite(model, order, ops, skip, keep_layout, min_elements=min_elements, type_hints=type_hints)
        except OptimizeError:
            raise
        except Exception as e:
            # The pass may have wanted a stripped tensor's values: run it on the
            # whole model, which protobuf can hold when it is under 2 GB.
            modelio.restore_large_tensors(model, stash)
            if not stash or modelio.needs_external_data(model):
                raise OptimizeError(f"the rewrite failed: {type(e).__name__}: {e}", exit_code=1) from e
            stash = {}
            rewritten, report = _rewrite(model, order, ops, skip, keep_layout, min_elements=min_elements, type_hints=type_hints)
        annotate_shapes(rewritten)
        modelio.restore_large_tensors(rewritten, stash)
    finally:
        modelio.restore_large_tensors(model, stash)
    return rewritten, report


def _node_names(model: onnx.ModelProto) -> set[str]:
    names: set[str] = set()

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            names.add(node.name)
            for attr in node.attribute:
                if attr.HasField("g"):
                    visit(attr.g)
                for g in attr.graphs:
                    visit(g)

    visit(model.graph)
    return names


def annotate_shapes(model: onnx.ModelProto) -> None:
    """States the inferred types and shapes of com.quake outputs in the main
    graph's value_info.

    The library's custom ops tell ONNX Runtime only fully static output
    shapes, so at session time a shape-dependent fusion downstream of a
    com.quake node (SkipLayerNormalization, MatMul+Add into Gemm, NCHWc
    layouts) would stop; ORT takes these shapes from value_info. Only the
    replaced nodes' outputs are stated: ORT then knows what it knew for its
    own ops, no more, and makes the fusions it would have made on the
    original (more shapes let it make others, which are not always faster:
    SkipLayerNormalization is slower than LayerNormalization + Add here)."""
    try:
        from .schemas import register_schemas

        register_schemas()
        typed = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # too big to serialise, or an op whose inference raises: ORT works without
        return
    known = {v.name for v in model.graph.value_info}
    outputs = {o for n in model.graph.node if n.domain == "com.quake" for o in n.output}
    model.graph.value_info.extend(v for v in typed.graph.value_info if v.name in outputs and v.name not in known)


def _verify(path: Path, libraries: Sequence[str]) -> None:
    """The written model must open in ONNX Runtime with the library, as users will open it."""
    try:
        sessions.open_session(path, sessions.options(libraries))
    except sessions.LibraryError:
        raise
    except Exception as e:
        raise OptimizeError(f"the rewritten model does not load in ONNX Runtime: {sessions.first_line(e)}",
                            exit_code=1) from e


def _refusal_of_input(model: onnx.ModelProto, src: Optional[Path], libraries: Sequence[str]) -> Optional[str]:
    """ONNX Runtime's complaint about the input model as given, None when it loads."""
    if src is None and modelio.needs_external_data(model):
        return None  # no file to open, and too big for bytes: ORT's verdict on the result must do
    try:
        sessions.open_session(src if src is not None else model.SerializeToString(), sessions.options(libraries))
    except Exception as e:
        return sessions.first_line(e)
    return None


def _bad_input(model: onnx.ModelProto, src: Optional[Path], libraries: Sequence[str]) -> None:
    """Raises the exit-2 error when ONNX Runtime refuses the input itself."""
    complaint = _refusal_of_input(model, src, libraries)
    if complaint is not None:
        raise OptimizeError(f"the input model does not load in ONNX Runtime: {complaint}")


# ORT's fused attention kernels compute their softmax inside; replacing the
# Softmax would break the pattern and cost the whole fused kernel.
ATTENTION_OPS = frozenset({
    "Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention", "PackedMultiHeadAttention",
    "DecoderAttention", "DecoderMaskedMultiHeadAttention", "DecoderMaskedSelfAttention", "LongformerAttention",
    "QAttention", "SparseAttention",
})


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


def _floors(min_elements: Optional[int]) -> dict:
    if min_elements is None:
        from .rewrite.engine import BREAK_EVEN

        return dict(BREAK_EVEN)
    if isinstance(min_elements, bool) or not isinstance(min_elements, int) or min_elements < 0:
        raise OptimizeError(f"min_elements must be a whole number >= 0, not {min_elements!r}")
    return {family: min_elements for family in all_ops()}


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
                node.name = next(f"{node.op_type}_{i}_{k}" for k in range(len(used) + 1) if f"{node.op_type}_{i}_{k}" not in used)
                used.add(node.name)
            kept[node.name] = absorbed[node.output[0]]
    return kept


def optimize(
    model_or_path: ModelLike,
    output: Optional[Union[str, os.PathLike]] = None,
    *,
    order: int = 2,
    ops: Optional[Iterable[str]] = None,
    skip_nodes: Iterable[str] = (),
    ort_fusions: bool = True,
    ort_level: str = "extended",
    in_place: bool = False,
    min_elements: Optional[int] = None,
    softmax_method: str = "quake",
    bits: int = 3,
    custom_ops_libraries: Iterable[Union[str, os.PathLike]] = (),
    also_written: Sequence[tuple[str, Union[str, os.PathLike]]] = (),
) -> tuple[onnx.ModelProto, Report]:
    """Replaces the exponential non-linearities of a model with com.quake ops.

    model_or_path: a path or a ModelProto (with its external data loaded).
    output: where to write the result (its external data, if any, goes to
        `<output name>.data` next to it); None writes nothing, unless
        `in_place` with a path input, which overwrites the input.
    order: 1, 2 or 3, the accuracy/speed order of the exponential.
    ops: the op families to replace (default: all of them).
    skip_nodes: node names to leave alone.
    ort_fusions: let ONNX Runtime optimise a copy first, offline, as the
        oracle of what it fuses: a Softmax it folds into a fused attention
        kernel is kept; everything else is rewritten on the original, and ORT
        makes its other fusions when it loads the result. On failure the
        report carries a warning and nothing is kept for ORT.
    ort_level: how far ONNX Runtime optimises first. "extended" (default): its
        fusions, portable; activations ORT would run in its NCHWc conv layout
        or fuse into a Conv are then kept (replacing them would add reorders).
        "all": ORT's graph at ENABLE_ALL, NCHWc conv layout included, is what
        gets rewritten (fixed for this machine's CPU; a warning says so); the
        activations on blocked tensors are then replaced, which is what makes
        SiLU CNNs faster.

    min_elements: nodes whose input shape is fully static and smaller than
        this are left to ONNX Runtime; None (default) uses the measured
        break-even of a custom-op call per op (2048 elements, Exp 8192), 0
        replaces whatever the size. Symbolic shapes are always replaced.
    softmax_method: "quake" (default) or "exaq": the method of the com.quake
        Softmax nodes made (docs/ops.md); exaq nodes quantize the exponent to
        `bits` (2..8) bits with C derived per row until `calibrate` fixes it.
    custom_ops_libraries: paths of custom-op libraries the model's other
        nodes need, registered on every session this opens (the library of
        onnxruntime-extensions is registered by itself for a model that
        imports ai.onnx.contrib).
    also_written: (what, path) of other files the caller will write after
        this returns (a report): refused before any work, like `output`,
        when one is an input file or `output`'s own.

    Nothing written is ever the input model or a file it references; the
    input's bytes are never changed except by `in_place`, which replaces
    the model and its data together (docs/optimize.md, "Which files a
    command writes").

    Returns the rewritten model and the report of every candidate node.
    Raises OptimizeError (nothing written) on bad input, options or failure:
    exit_code 2 for the user's input (an input model ONNX Runtime itself
    refuses included), 1 for a failure of the tool.
    """
    if order not in ORDERS:
        raise OptimizeError(f"order must be 1, 2 or 3, not {order!r}")
    if softmax_method not in exaq.METHODS:
        raise OptimizeError(f"softmax_method must be one of {', '.join(exaq.METHODS)}, not {softmax_method!r}")
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in exaq.BITS:
        raise OptimizeError(f"bits must be in 2..8, not {bits!r}")
    chosen_ops = parse_ops(ops)
    skip = frozenset(skip_nodes)
    if ort_level not in LEVELS:
        raise OptimizeError(f"ort_level must be one of {', '.join(LEVELS)}, not {ort_level!r}")
    floors = _floors(min_elements)
    if ort_level != "extended" and not ort_fusions:
        raise OptimizeError(f"ort level {ort_level} needs ONNX Runtime's fusions (drop --no-ort-fusions)")

    user_libraries = sessions.user_libraries(custom_ops_libraries)
    src: Optional[Path] = None
    inputs = writes.InputFiles()
    if isinstance(model_or_path, onnx.ModelProto):
        model = model_or_path
        if not all(modelio.is_loaded(t) for t in modelio.iter_tensors(model)):
            raise OptimizeError("the model's external data is not loaded; pass its path instead")
    else:
        src = writes.absolute(model_or_path)
        model = modelio.load_graph(src)
        modelio.check_external_data(model, src)
        inputs.add_model(model, src)
    dest = _destination(src, output, in_place, inputs)
    _check_also_written(also_written, dest, inputs)
    libraries = sessions.libraries_for(model, user_libraries)

    had_external = modelio.has_external_data(model)
    warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="quake-onnx-") as tmp:
        work = Path(tmp)
        fused = None
        if ort_fusions:
            try:
                fused = _fuse(model, src, work, had_external, ort_level, libraries)
            except FusionError as e:
                _bad_input(model, src, libraries)
                warnings.append(f"{e}; rewrote the model without ONNX Runtime's fusions")
        shutil.rmtree(work / "ort", ignore_errors=True)  # free the disk before writing
        if fused is not None and ort_level == "extended":
            # ORT's fused graph is the oracle, the original what is rewritten:
            # ORT redoes its fusions when it loads the result, the output stays
            # standard ONNX plus com.quake, and a second load of ORT's own
            # output cannot trigger fusions ORT did not make on the original
            # (measured: SkipLayerNormalization, slower than LayerNorm + Add here).
            absorbed = absorbed_by_ort(model, fused)
            if any(not n.name for n in model.graph.node if n.output and n.output[0] in absorbed):
                model = _copy(model)  # naming them must not touch the caller's model
            kept = _keep_absorbed(model, absorbed)
            # ORT's types of what follows ops onnx cannot infer (ort_fusions.ort_types).
            type_hints = list(fused.graph.value_info)
            fused = None
        else:
            kept, type_hints = {}, []
        if fused is None:
            if src is not None:
                modelio.load_external_data(model, src)
            fused = model
        del model

        missing = sorted(skip - _node_names(fused))
        if missing:
            warnings.append(f"--skip-nodes: no node named {', '.join(missing)}")
        laid_out = has_nchwc_layout(fused)
        if laid_out:
            warnings.append(NCHWC_WARNING)
        # Kept activations are the default's safety: a model ORT has laid out has none left to keep.
        existing_softmax = exaq.quake_softmax_outputs(fused)
        rewritten, report = _rewrite_light(
            fused, order, chosen_ops, skip | frozenset(kept), keep_layout=not laid_out, min_elements=floors,
            type_hints=type_hints,
        )
        if softmax_method == "exaq":
            exaq.use_exaq(rewritten, report, bits, existing_softmax)
        del fused
        report.decisions[:] = [
            dataclasses.replace(d, reason=f"kept: ONNX Runtime fuses it into com.microsoft.{kept[d.node]}")
            if d.node in kept and not d.replaced and d.node not in skip else d
            for d in report.decisions
        ]

    report.warnings.extend(warnings)
    if dest is not None:
        external = had_external or modelio.needs_external_data(rewritten)
        # In place, the input is what gets replaced, its data files with it.
        keep = None if in_place and src is not None and dest == src else inputs
        try:
            writes.save_model_atomic(rewritten, dest, external=external,
                                     verify=lambda path: _verify(path, libraries), keep=keep)
        except OptimizeError as e:
            if e.exit_code == 1 and not ort_fusions:  # the oracle would have tried the input first
                _bad_input(model_or_path if src is None else modelio.load_graph(src), src, libraries)
            raise
        except ModelFileError:
            raise
        except OSError as e:
            raise OptimizeError(f"cannot write {dest}: {e.strerror or e}", exit_code=1) from None
    return rewritten, report


def _destination(src: Optional[Path], output, in_place: bool, inputs: writes.InputFiles) -> Optional[Path]:
    if output is None:
        if in_place and src is None:
            raise OptimizeError("in_place needs a model path, not a ModelProto")
        return src if in_place else None
    dest = writes.absolute(output)
    is_src = src is not None and (os.path.realpath(src) == os.path.realpath(dest) or _same_inode(src, dest))
    if is_src and not in_place:
        raise OptimizeError(f"output {output} is the input; pass --in-place to overwrite it")
    # In place, OUT may be the input model, never one of its data files.
    writes.check_output_path(dest, inputs=None if is_src else inputs)
    return dest


def _same_inode(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_also_written(also_written, dest: Optional[Path], inputs: writes.InputFiles) -> None:
    for what, path in also_written:
        if dest is not None and writes.belongs_to_pair(Path(path), dest):
            raise OptimizeError(f"{what} {path} would be written over the output model or its data file")
        writes.check_output_path(Path(path), what, inputs)


def _fuse(model: onnx.ModelProto, src: Optional[Path], work: Path, external: bool, level: str,
          libraries: Sequence[str]) -> onnx.ModelProto:
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


def _save_copy(model: onnx.ModelProto, path: Path) -> None:
    # onnx.save with external data empties the tensors it moves out; the
    # caller's model must stay whole for the fallback and for the user.
    onnx.save_model(
        _copy(model), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
        location=path.name + ".data", size_threshold=writes.EXTERNAL_THRESHOLD,
    )


class InferenceSession(ort.InferenceSession):
    """onnxruntime.InferenceSession with the com.quake library registered.

    quake_onnx.InferenceSession("model.quake.onnx") runs a rewritten model;
    sess_options and providers are passed on (CPU when not given). The
    library of onnxruntime-extensions is registered too when the model
    imports ai.onnx.contrib, and every path in `custom_ops_libraries`
    (raises sessions.LibraryError, a ModelFileError, for one that does not
    exist or load)."""

    def __init__(self, path_or_bytes, sess_options: Optional[ort.SessionOptions] = None, providers=None,
                 custom_ops_libraries: Iterable[Union[str, os.PathLike]] = (), **kw):
        if isinstance(path_or_bytes, os.PathLike):
            path_or_bytes = os.fspath(path_or_bytes)
        libraries = sessions.libraries_for(sessions.graph_of(path_or_bytes),
                                           sessions.user_libraries(custom_ops_libraries))
        so = sess_options if sess_options is not None else ort.SessionOptions()
        for lib in libraries:
            so.register_custom_ops_library(lib)
        super().__init__(path_or_bytes, so, providers=providers or ["CPUExecutionProvider"], **kw)
