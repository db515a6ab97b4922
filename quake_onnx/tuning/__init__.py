"""`quake-onnx tune` and `quake_onnx.tune(...)`: the optimizer's choices measured
on this machine and on the user's inputs (docs/tune.md).

prepare.py runs the optimizer's stages once per ORT level and groups the
candidates; search.py decides (accuracy first, then speed, within the
budget); bench.py measures real models; report.py writes it down."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from .. import modelio, sessions, writes
from ..check.inputs import DEFAULT_IMAGE_SIZE, InputError, Inputs, InputSet, generate, graph_inputs, load_inputs
from ..check.runner import Thresholds
from ..modelio import ModelFileError
from ..pipeline.job import Job, OptimizeError
from ..pipeline.load import load
from ..pipeline.save import save
from .report import TUNED_ON, build_report, machine
from .search import Budget, Search
from .space import ATTENTION_PRECISIONS

DEFAULT_BUDGET = 120.0
DEFAULT_MIN_COSINE = 0.9999
ModelLike = Union[str, os.PathLike, onnx.ModelProto]

__all__ = ["ATTENTION_PRECISIONS", "DEFAULT_BUDGET", "DEFAULT_MIN_COSINE", "TUNED_ON", "TuneError", "tune"]


class TuneError(ModelFileError):
    """One line for the CLI: exit_code 2 for bad input or options, 1 for a failure of the tool."""


class Progress:
    """What tune tells about itself while it runs (the CLI draws a bar)."""

    def start(self, estimate: float, budget: float, plan: str) -> None: ...

    def step(self, text: str, elapsed: float) -> None: ...

    def done(self) -> None: ...


def tune(
    model_or_path: ModelLike,
    output: Optional[Union[str, os.PathLike]] = None,
    *,
    inputs: Union[None, str, os.PathLike, Sequence[Mapping[str, np.ndarray]]] = None,
    dims: Optional[Mapping[str, int]] = None,
    vocab: Optional[int] = None,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    ranges: Optional[Mapping[str, tuple]] = None,
    min_cosine: Optional[float] = DEFAULT_MIN_COSINE,
    max_abs_error: Optional[float] = None,
    min_top1_agreement: Optional[float] = None,
    threads: int = 1,
    budget: float = DEFAULT_BUDGET,
    allow_exaq: bool = False,
    attention_precision: str = "auto",
    custom_ops_libraries: Iterable[Union[str, os.PathLike]] = (),
    also_written: Sequence[tuple[str, Union[str, os.PathLike]]] = (),
    progress: Optional[Progress] = None,
    rounds: int = 8,
    bench: Optional[Callable] = None,
    clock: Optional[Callable[[], float]] = None,
) -> tuple[onnx.ModelProto, dict]:
    """Chooses, by measuring, what to replace and how: per group of candidate
    nodes (same rule, op and input shape) replace or keep and the order (1, 2,
    3; for Softmax exaq and its bits with `allow_exaq`), and for the model the
    ORT level and the attention and glu fusions. Accuracy against the
    original on `inputs` first (check's thresholds: `min_cosine`,
    `max_abs_error`, `min_top1_agreement`), then speed by paired rounds
    (check/paired.py), within `budget` seconds (docs/tune.md).

    model_or_path: a path or a ModelProto (external data loaded).
    output: where to write the result (None: nothing written). When no
        combination is faster than the original beyond the round-to-round
        spread, the result is the original model, unchanged.
    inputs: an .npz path, or a list of feed dicts; None: the model-zoo
        `test_data_set_*` beside the model, else generated (`dims`, `vocab`,
        `seed`, `image_size`, `ranges` as for `check`).
    threads: intra-op threads of every session measured.
    attention_precision: of the fused com.quake Attention: "auto" (float32,
        and bfloat16 too where this CPU has a bf16 engine), "float32" (never
        bfloat16), "bfloat16" (fused attention only at bfloat16, the
        tolerance still applies: a group outside it stays unfused; on a CPU
        without a bf16 engine the op's float32 fallback runs it, and a note
        says so).
    also_written: (what, path) of reports the caller writes afterwards:
        refused before any work when one would overwrite an input or OUT.
    progress: a Progress told the estimate and every step.
    rounds: paired rounds per comparison (at least 4, for quartiles).
    bench, clock: for tests: `bench(prepared, feeds, threads)` returns the
        Bench that measures (search.py), `clock` the time the budget counts.

    Returns the result (the tuned model, which carries `quake_onnx.tuned_on`
    in its metadata, or the original) and the report (a dict; schema
    quake_onnx/check/tune-report.schema.json). Raises TuneError, or the
    optimizer's OptimizeError (exit 2 for bad input, 1 for a failure); bad
    input includes a model that already has com.quake nodes (tune the model
    it was made from) and a QUAKE_ONNX_LIBRARY that names no file
    (sessions.LibraryError)."""
    clock = clock or time.monotonic
    started = clock()
    wall = time.perf_counter()
    thresholds = _thresholds(min_cosine, max_abs_error, min_top1_agreement)
    _check_numbers(threads, budget, rounds)
    if attention_precision not in ATTENTION_PRECISIONS:
        raise TuneError(
            f"attention_precision must be one of {', '.join(ATTENTION_PRECISIONS)}, not {attention_precision!r}"
        )
    from ..optimize import _settings

    settings = _settings(2, None, (), True, "extended", None, "quake", 3, custom_ops_libraries)
    pristine = model_or_path
    if isinstance(model_or_path, onnx.ModelProto):
        model_or_path = _copy(model_or_path)  # nodes get names: never the caller's model
    elif output is not None and _same_file(model_or_path, output):
        raise TuneError(f"output {output} is the input; tune never overwrites its input (choose another path)")
    npz = Path(inputs) if isinstance(inputs, (str, os.PathLike)) else None
    job = load(model_or_path, output, False, settings, also_written)
    _refuse_optimized(job)
    if npz is not None:  # no file written may be the input set either
        job.inputs.add(npz, "the input set (--inputs)")
        for what, path in ([("output", job.dest)] if job.dest is not None else []) + list(also_written):
            if writes.belongs_to_pair(npz, Path(path)) or Path(path) in job.inputs:
                raise TuneError(f"{what} {path} is the input set (--inputs); writing it would destroy it")
    loaded = _inputs(job, inputs, npz, dims or {}, vocab, seed, image_size, ranges or {})
    feeds = [s.feeds for s in loaded.sets]
    original_source = _original_source(job)
    _run_original(job, original_source, feeds, loaded.source)

    from .prepare import prepare

    steps = progress or Progress()
    prep = prepare(
        job, progress=lambda text: steps.step(text, clock() - started), attention_precision=attention_precision
    )
    the_budget = Budget(budget, clock, started)
    if bench is None:
        from .bench import ModelBench

        measurer = ModelBench(prep, original_source, feeds, threads, rounds=rounds, clock=clock)
    else:
        measurer = bench(prep, feeds, threads)
    try:
        search = Search(
            prep.groups,
            prep.configs,
            measurer,
            thresholds,
            the_budget,
            allow_exaq=allow_exaq,
            progress=lambda text: steps.step(text, the_budget.elapsed()),
        )
        estimate = the_budget.elapsed() + search.estimate()
        steps.start(estimate, budget, _plan(prep))
        outcome = search.run()
        tuned = not outcome.variant.is_original
        result_model = _write(job, prep, outcome, measurer, feeds) if tuned else _write_original(job, pristine)
    finally:
        steps.done()
        close = getattr(measurer, "close", None)
        if close is not None:
            close()
    report = build_report(
        prep,
        outcome,
        model=str(job.src) if job.src is not None else None,
        output=str(job.dest) if job.dest is not None else None,
        thresholds=thresholds,
        inputs={
            "source": loaded.source,
            "sets": len(loaded.sets),
            "shapes": {k: list(v.shape) for k, v in loaded.sets[0].feeds.items()},
        },
        threads=threads,
        budget={
            "seconds": float(budget),
            "estimate": round(estimate, 3),
            "elapsed": round(the_budget.elapsed(), 3),
            "exhausted": outcome.budget_exhausted,
            "not_tried": list(outcome.not_tried),
        },
        seconds=time.perf_counter() - wall,
        warnings=list(loaded.warnings) + prep.warnings,
    )
    return result_model, report


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _same_file(a, b) -> bool:
    if writes.same_path(a, b):
        return True
    try:
        return os.path.samefile(writes.absolute(a), writes.absolute(b))
    except OSError:
        return False


def _thresholds(min_cosine, max_abs_error, min_top1_agreement) -> Thresholds:
    def number(name, v, low=None, high=None):
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise TuneError(f"{name} must be a number, not {v!r}")
        if (low is not None and v < low) or (high is not None and v > high):
            bounds = f">= {low:g}" if high is None else (f"<= {high:g}" if low is None else f"in [{low:g}, {high:g}]")
            raise TuneError(f"{name} must be {bounds}, not {v!r}")
        return float(v)

    t = Thresholds(
        number("max_abs_error", max_abs_error, 0.0),
        number("min_cosine", min_cosine, -1.0, 1.0),
        number("min_top1_agreement", min_top1_agreement, 0.0, 1.0),
    )
    if t.max_abs_error is None and t.min_cosine is None and t.min_top1_agreement is None:
        raise TuneError("no tolerance: give at least one of min_cosine, max_abs_error, min_top1_agreement")
    return t


def _check_numbers(threads, budget, rounds) -> None:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise TuneError(f"threads must be a whole number >= 1, not {threads!r}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0 or budget == float("inf"):
        raise TuneError(f"budget must be a number of seconds > 0, not {budget!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 4:
        raise TuneError(f"rounds must be a whole number >= 4 (for quartiles), not {rounds!r}")


def _inputs(job: Job, inputs, npz, dims, vocab, seed, image_size, ranges) -> Inputs:
    graph = job.model
    try:
        if inputs is not None and npz is None:
            inputs = None if isinstance(inputs, Mapping) else list(inputs)  # a generator is read once
            if inputs is None or not all(isinstance(f, Mapping) for f in inputs):
                raise TuneError("inputs: give a list of feeds, each a dict of input name to array (or an .npz path)")
            sets = [InputSet(dict(f), name=f"feeds {i}") for i, f in enumerate(inputs)]
            if not sets:
                raise InputError("inputs: no feeds given")
            return Inputs("feeds", sets)
        if job.src is not None:
            return load_inputs(
                graph, job.src, npz=npz, dims=dims, vocab=vocab, seed=seed, image_size=image_size, ranges=ranges
            )
        if npz is not None:
            return load_inputs(graph, Path(os.devnull), npz=npz)
        generated = Inputs("generated", [], seed=seed)
        feeds = generate(
            graph,
            graph_inputs(graph),
            dims=dims,
            vocab=vocab,
            seed=seed,
            warnings=generated.warnings,
            image_size=image_size,
            ranges=ranges,
            notes=generated.notes,
            used=generated.dims,
        )
        generated.sets.append(InputSet(feeds))
        return generated
    except InputError:
        raise
    except ModelFileError as e:
        raise TuneError(str(e)) from None


def _refuse_optimized(job: Job) -> None:
    """An input that already has com.quake nodes has no original to measure against (exit 2)."""
    ops = sessions.quake_ops(job.model)
    if ops:
        raise TuneError(
            f"{job.src if job.src is not None else 'the model'} already has com.quake nodes ({', '.join(ops)}): "
            "it is an optimized model, and tune measures a model's ONNX Runtime ops against com.quake ones; "
            "tune the model it was made from"
        )


def _original_source(job: Job):
    """What ONNX Runtime opens for the original: its file, or its bytes."""
    if job.src is not None:
        return str(job.src)
    if modelio.needs_external_data(job.model):
        raise TuneError("a ModelProto of 2 GB or more cannot be tuned from memory; pass its path")
    return job.model.SerializeToString()


def _run_original(job: Job, source, feeds: list, where: str) -> None:
    """The original must load and run on the inputs: otherwise it is bad input (exit 2)."""
    so = sessions.options(sessions.libraries_for(job.model, job.settings.user_libraries, quake=False))
    try:
        session = sessions.open_session(source, so)
    except sessions.LibraryError:
        raise
    except Exception as e:
        raise TuneError(f"the input model does not load in ONNX Runtime: {sessions.one_line(e)}") from None
    # Every set, not the first alone: a later bad one failed deep in the measurement (raw ORT errors).
    for k, feed in enumerate(feeds):
        try:
            session.run(None, feed)
        except Exception as e:
            hint = "; set --vocab or --dim" if where == "generated" else ""
            which = f" (set {k + 1} of {len(feeds)})" if len(feeds) > 1 else ""
            raise TuneError(
                f"the original model does not run on the {where} inputs{which}: {sessions.one_line(e)}{hint}"
            ) from None


def _plan(prep) -> str:
    return (
        f"{len(prep.groups)} group(s) of candidate nodes in {len(prep.configs)} configuration(s)"
        if prep.groups
        else "no candidate node"
    )


def _write(job: Job, prep, outcome, measurer, feeds) -> onnx.ModelProto:
    """The tuned model, marked with the CPU it was measured on, written to OUT."""
    from .bench import build_calibrated

    own = getattr(measurer, "model", None)  # the bench's copy, when it still has it; a test's bench has none
    built = own(outcome.variant) if own is not None else build_calibrated(prep, outcome.variant, feeds)
    model = built.model
    entry = next((p for p in model.metadata_props if p.key == TUNED_ON), None)
    if entry is None:
        entry = model.metadata_props.add()
        entry.key = TUNED_ON
    entry.value = machine()["cpu"]
    if job.dest is None:
        return model
    final = Job(
        settings=job.settings,
        model=model,
        src=job.src,
        dest=job.dest,
        in_place=False,
        inputs=job.inputs,
        libraries=sessions.libraries_for(model, job.settings.user_libraries),
        had_external=job.had_external,
    )
    return save(final).model


def _write_original(job: Job, pristine) -> onnx.ModelProto:
    """OUT = the original, unchanged: its bytes, or for a model with external
    data the same tensors written as a pair (writes.py)."""
    if isinstance(pristine, onnx.ModelProto):
        model = _copy(pristine)
        if job.dest is not None:
            _save(model, job, modelio.needs_external_data(model))
        return model
    src = job.src
    model = modelio.load_graph(src)
    external = modelio.has_external_data(model)
    modelio.load_external_data(model, src)
    if job.dest is None:
        return model
    try:
        if external:
            _save(model, job, True)
        else:
            writes.write_bytes_atomic(src.read_bytes(), job.dest)
    except OSError as e:
        raise OptimizeError(f"cannot write {job.dest}: {e.strerror or e}", exit_code=1) from None
    return model


def _save(model: onnx.ModelProto, job: Job, external: bool) -> None:
    try:
        writes.save_model_atomic(model, job.dest, external=external, keep=job.inputs)
    except OSError as e:
        raise OptimizeError(f"cannot write {job.dest}: {e.strerror or e}", exit_code=1) from None
