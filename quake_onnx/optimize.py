"""The model optimizer behind `quake-onnx optimize`: the options checked, then
the stages of quake_onnx/pipeline/ in order (each takes the Job of the one
before and returns it)."""

from __future__ import annotations

import dataclasses
import os
import weakref
from typing import Iterable, Optional, Sequence, Union

import onnx
import onnxruntime as ort

from . import exaq, sessions
from .ort_fusions import LEVELS
from .pipeline.attention import fuse_attention
from .pipeline.job import OptimizeError, Settings
from .pipeline.load import load
from .pipeline.method import choose_softmax_method
from .pipeline.op_rewrite import rewrite_ops
from .pipeline.oracle import ort_oracle
from .pipeline.save import save
from .pipeline.shapes import state_shapes
from .reference import ATTENTION_PRECISIONS
from .rewrite.report import Report

# The pass's own list when it is importable; the same names otherwise, so
# option checking works even where the pass cannot be loaded.
_KNOWN_OPS = frozenset({"attention", "glu", "softmax", "logsoftmax", "gelu", "silu", "sigmoid", "exp"})
ORDERS = (1, 2, 3)

ModelLike = Union[str, os.PathLike, onnx.ModelProto]
__all__ = ["InferenceSession", "OptimizeError", "all_ops", "optimize", "parse_ops"]


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
    attention_precision: str = "float32",
) -> tuple[onnx.ModelProto, Report]:
    """Replaces the exponential non-linearities of a model with com.quake ops.

    model_or_path: a path or a ModelProto (with its external data loaded).
    output: where to write the result (its external data, if any, goes to
        `<output name>.data` next to it); None writes nothing, unless
        `in_place` with a path input, which overwrites the input.
    order: 1, 2 or 3, the accuracy/speed order of the exponential.
    ops: the op families to replace (default: all of them); "attention" fuses
        attention blocks into com.quake Attention (docs/optimize.md).
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
        break-even of a custom-op call per op (2048 elements, Exp 8192; for
        attention blocks, counted in score elements B*H*Sq*Skv, the measured
        break-even of the fused op, engine.BREAK_EVEN, higher for blocks
        without a mask, lower for causal ones), 0 replaces and fuses
        whatever the size. Symbolic shapes are always replaced.
    softmax_method: "quake" (default) or "exaq": the method of the com.quake
        Softmax nodes made (docs/ops.md); exaq nodes quantize the exponent to
        `bits` (2..8) bits with C derived per row until `calibrate` fixes it.
    attention_precision: "float32" (default) or "bfloat16": the precision
        attribute of the com.quake Attention nodes fused (bf16 tile products
        with float32 accumulation on CPUs with a bf16 engine, float32
        elsewhere; docs/ops.md, "Attention"); the --explain reason of each
        names the engine that runs it on this machine. With "bfloat16",
        blocks of symbolic size are fused too, and with min_elements None
        static ones get bfloat16's break-even (engine.BF16_ATTENTION_BREAK_EVEN;
        docs/optimize.md, "The break-even").
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
    refuses included; a custom-op library, or the QUAKE_ONNX_LIBRARY
    override, that does not exist or load raises sessions.LibraryError, a
    ModelFileError with exit_code 2), 1 for a failure of the tool.
    """
    settings = _settings(
        order, ops, skip_nodes, ort_fusions, ort_level, min_elements, softmax_method, bits, custom_ops_libraries
    )
    if isinstance(attention_precision, str):
        attention_precision = attention_precision.strip().lower()  # as the CLI takes it
    if attention_precision not in ATTENTION_PRECISIONS:
        raise OptimizeError(
            f"attention_precision must be one of {', '.join(ATTENTION_PRECISIONS)}, not {attention_precision!r}"
        )
    settings = dataclasses.replace(settings, attention_precision=attention_precision)
    if attention_precision == "bfloat16":
        settings = _bf16_attention_floors(settings, min_elements is None)
    job = load(model_or_path, output, in_place, settings, also_written)
    job = ort_oracle(job)
    job = fuse_attention(job)
    job = rewrite_ops(job)
    job = choose_softmax_method(job)
    job = state_shapes(job)
    job = save(job)
    return job.model, job.report


def _settings(
    order, ops, skip_nodes, ort_fusions, ort_level, min_elements, softmax_method, bits, libraries
) -> Settings:
    """The options checked: OptimizeError (exit 2) names the first bad one."""
    if order not in ORDERS:
        raise OptimizeError(f"order must be 1, 2 or 3, not {order!r}")
    if softmax_method not in exaq.METHODS:
        raise OptimizeError(f"softmax_method must be one of {', '.join(exaq.METHODS)}, not {softmax_method!r}")
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in exaq.BITS:
        raise OptimizeError(f"bits must be in 2..8, not {bits!r}")
    chosen_ops = parse_ops(ops)
    if ort_level not in LEVELS:
        raise OptimizeError(f"ort_level must be one of {', '.join(LEVELS)}, not {ort_level!r}")
    floors = _floors(min_elements)
    if ort_level != "extended" and not ort_fusions:
        raise OptimizeError(f"ort level {ort_level} needs ONNX Runtime's fusions (drop --no-ort-fusions)")
    return Settings(
        order=order,
        ops=chosen_ops,
        skip=frozenset(skip_nodes),
        ort_fusions=ort_fusions,
        ort_level=ort_level,
        floors=tuple(sorted(floors.items())),
        softmax_method=softmax_method,
        bits=bits,
        user_libraries=sessions.user_libraries(libraries),
    )


def _bf16_attention_floors(settings: Settings, default_floors: bool) -> Settings:
    """Attention fused at bfloat16: blocks of symbolic size fused too, which
    float32 leaves per op (an encoder exported with a symbolic sequence then
    runs fused at any length: below about S 64 that is 0.7-0.9x the block per
    op), and, unless the user set min_elements, bfloat16's measured floor for
    static sizes (engine.BF16_ATTENTION_BREAK_EVEN, S 64 at H12 instead of
    float32's S 1024 with a mask, S 256 causal)."""
    from .rewrite.engine import BF16_ATTENTION_BREAK_EVEN, one_attention_floor

    floors = dict(settings.floors)
    # bfloat16's floor was measured with a mask; blocks without one share it.
    floors = one_attention_floor(floors, BF16_ATTENTION_BREAK_EVEN if default_floors else floors["attention"])
    return dataclasses.replace(settings, floors=tuple(sorted(floors.items())), fuse_symbolic=frozenset({"attention"}))


def _floors(min_elements: Optional[int]) -> dict:
    if min_elements is None:
        from .rewrite.engine import BREAK_EVEN

        return dict(BREAK_EVEN)
    if isinstance(min_elements, bool) or not isinstance(min_elements, int) or min_elements < 0:
        raise OptimizeError(f"min_elements must be a whole number >= 0, not {min_elements!r}")
    return {family: min_elements for family in all_ops()}


class InferenceSession(ort.InferenceSession):
    """onnxruntime.InferenceSession with the com.quake library registered.

    quake_onnx.InferenceSession("model.quake.onnx") runs a rewritten model;
    sess_options and providers are passed on (CPU when not given). The
    library of onnxruntime-extensions is registered too when the model
    imports ai.onnx.contrib, and every path in `custom_ops_libraries`
    (raises sessions.LibraryError, a ModelFileError, for one that does not
    exist or load, and for a QUAKE_ONNX_LIBRARY that names no file). Each
    library is registered once on `sess_options`, so they can serve several
    sessions; options where the com.quake library was registered by hand
    raise ValueError (ORT refuses a domain twice)."""

    def __init__(
        self,
        path_or_bytes,
        sess_options: Optional[ort.SessionOptions] = None,
        providers=None,
        custom_ops_libraries: Iterable[Union[str, os.PathLike]] = (),
        **kw,
    ):
        if isinstance(path_or_bytes, os.PathLike):
            path_or_bytes = os.fspath(path_or_bytes)
        libraries = sessions.libraries_for(
            sessions.graph_of(path_or_bytes), sessions.user_libraries(custom_ops_libraries)
        )
        so = sess_options if sess_options is not None else ort.SessionOptions()
        # Registering changes the caller's options, and ORT refuses a session
        # whose options hold one library twice: each library once per options.
        registered = _REGISTERED.setdefault(so, set())
        for lib in libraries:
            if lib not in registered:
                so.register_custom_ops_library(lib)
                registered.add(lib)
        try:
            super().__init__(path_or_bytes, so, providers=providers or ["CPUExecutionProvider"], **kw)
        except Exception as e:
            if "already set in registry" not in str(e):
                raise
            raise ValueError(
                "sess_options already has a custom-op library of the same domain registered (e.g. the com.quake "
                "library, registered by hand): quake_onnx.InferenceSession registers it itself, so pass options "
                "without it, or use onnxruntime.InferenceSession with those options"
            ) from None


# SessionOptions -> the libraries InferenceSession registered on them.
_REGISTERED: "weakref.WeakKeyDictionary[ort.SessionOptions, set]" = weakref.WeakKeyDictionary()
