"""One model: optimize it (or take an optimized copy), run both on the same
inputs, compare every output, time both, hold the result to the thresholds."""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from ..modelio import ModelFileError
from ..sessions import one_line as _one_line
from . import compare as cmp
from .inputs import DEFAULT_IMAGE_SIZE, InputError, load_inputs
from .timing import measure

# np.testing.assert_allclose tolerances the ONNX model zoo checks outputs with,
# used for the original run against the recorded outputs.
ZOO_RTOL, ZOO_ATOL = 1e-3, 1e-5


@dataclass
class Thresholds:
    max_abs_error: Optional[float] = None
    min_cosine: Optional[float] = None
    min_top1_agreement: Optional[float] = None
    min_speedup: Optional[float] = None

    def to_dict(self) -> dict:
        return asdict(self)

    def accuracy_only(self) -> "Thresholds":
        return Thresholds(self.max_abs_error, self.min_cosine, self.min_top1_agreement, None)


@dataclass
class CheckOptions:
    order: int = 2
    ops: Optional[frozenset] = None
    ort_level: str = "extended"
    min_elements: Optional[int] = None
    optimized: Optional[Path] = None
    inputs: Optional[Path] = None
    dims: Mapping[str, int] = field(default_factory=dict)
    vocab: Optional[int] = None
    seed: int = 0
    threads: int = 1
    warmup: int = 3
    runs: int = 20
    top_k: int = 5
    thresholds: Thresholds = field(default_factory=Thresholds)
    custom_ops_libraries: tuple[str, ...] = ()  # absolute paths (sessions.user_libraries)
    image_size: int = DEFAULT_IMAGE_SIZE
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    warn_unused_dims: bool = True  # a zoo names the --dim no model used once, not per model
    ranges_named: Optional[frozenset] = None  # range names whose absence warns (None: all; generate())
    tune: bool = False  # `quake-onnx tune` the model (within tune_budget seconds) instead of optimizing it
    tune_budget: float = 120.0
    tune_attention_precision: str = "auto"  # tune's --attention-precision
    inputs_named: str = "--inputs"  # how messages name `inputs`: the option, or the manifest key it came from


class CheckError(ModelFileError):
    """The check could not be done; `stage` says where. exit_code 2 for the
    user's input (paths, inputs, options), 1 for a failure of the tool."""

    def __init__(self, message: str, stage: str, exit_code: int = 2):
        super().__init__(message, exit_code)
        self.stage = stage


def resolve_model(path: Path) -> Path:
    """A model file, or a model-zoo folder holding model.onnx (or one *.onnx)."""
    if path.is_dir():
        if (path / "model.onnx").is_file():
            return path / "model.onnx"
        found = sorted(path.glob("*.onnx"))
        if len(found) != 1:
            raise CheckError(f"{path} is a folder with {len(found) or 'no'} .onnx files; name the model", "load")
        return found[0]
    return path


def _session(model: str, graph, threads: int, library: bool, extra: tuple[str, ...]):
    import onnxruntime as ort

    from .. import sessions

    # ORT logs a failing run as an error line of its own; the exception carries
    # the same text and becomes the one-line report.
    so = sessions.options(
        sessions.libraries_for(graph, extra, quake=library),
        level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        threads=threads,
    )
    return sessions.open_session(model, so)


def summarize(outputs: list[dict]) -> dict:
    """The figures thresholds and scores look at: worst over all outputs."""

    abs_errs = [_number(o["max_abs_error"]) for o in outputs]
    cosines = [_number(o["cosine"]) for o in outputs]
    top1 = [o["top1_agreement"] for o in outputs if o["scores"] and o["top1_agreement"] is not None]
    return {
        "max_abs_error": cmp._jsonable(max(abs_errs)) if abs_errs else None,
        "min_cosine": cmp._jsonable(math.nan if any(map(math.isnan, cosines)) else min(cosines)) if cosines else None,
        "min_top1_agreement": min(top1) if top1 else None,
        "nonfinite_mismatch": sum(o["nonfinite_mismatch"] for o in outputs),
        "original_nan": sum(o.get("original_nan", 0) for o in outputs),
    }


def _number(v) -> float:
    """A report's real (cmp._jsonable: "inf", "-inf" and "nan" as strings) as a float."""
    return float(v) if isinstance(v, str) else v


def _worst(outputs: list[dict], key: str, largest: bool) -> str:
    def num(o):
        v = o[key]
        return math.inf if v in ("inf", "nan") and largest else (-math.inf if v in ("inf", "nan") else v)

    pick = max(outputs, key=num) if largest else min(outputs, key=num)
    return pick["name"]


def _nan_only_in_original(reference: np.ndarray, output: np.ndarray) -> bool:
    """Every element NaN in the original's output, and the optimized one has
    numbers: what an output all of whose rows are fully masked gives."""
    r, o = np.asarray(reference), np.asarray(output)
    return r.dtype.kind == "f" and r.size > 0 and bool(np.isnan(r).all()) and bool(np.isfinite(o).any())


def _apart(value: float, limit: float, spec: str, below: bool) -> tuple[str, str]:
    """`value` (in format `spec`) and `limit` as a failure line shows them,
    with more digits until the printed numbers fail as the values do (value
    below the limit when `below`, else above): not "cosine 0.999999 <
    0.999999" for 0.99999932 against 0.99999933, nor "speedup 1.00x < 1x"
    for 0.996."""

    def fails(shown: tuple[str, str]) -> bool:
        a, b = float(shown[0]), float(shown[1])
        return a < b if below else a > b

    shown = format(value, spec), f"{limit:g}"
    for d in range(3, 18):
        if fails(shown):
            return shown
        shown = f"{value:.{d}g}", f"{limit:.{d}g}"
    return shown if fails(shown) else (repr(value), repr(limit))


def judge(result: Mapping[str, Any], thresholds: Thresholds) -> list[str]:
    """Every threshold the result misses, one phrase each. Non-finite
    mismatches (docs/zoo.md: inf or NaN against a number or another
    non-finite value) always fail."""
    summary, outputs = result["summary"], result["outputs"]
    failures = []
    if summary["nonfinite_mismatch"]:
        bad = [o["name"] for o in outputs if o["nonfinite_mismatch"]]
        failures.append(
            f"non-finite mismatches (inf or NaN where the other run has a number or another non-finite value): "
            f"{summary['nonfinite_mismatch']} (output {', '.join(bad)})"
        )
    # NaN in both runs agrees and says nothing: an output where that is all
    # there is was not checked (a report from before the count has none).
    unchecked = [
        o["name"] for o in outputs if o.get("compared") == 0 and math.prod(o["shape"]) and not o["nonfinite_mismatch"]
    ]
    if unchecked:
        failures.append(
            f"nothing compared: output {', '.join(unchecked)} is NaN in both runs wherever it is not the same "
            "infinity (give inputs for which the original gives numbers)"
        )
    t = thresholds
    # inf and nan come as the strings JSON keeps them in (an output of strings that differ: inf).
    worst_abs = _number(summary["max_abs_error"])
    if (
        t.max_abs_error is not None
        and worst_abs is not None
        and not summary["nonfinite_mismatch"]
        and not (worst_abs <= t.max_abs_error)
    ):
        a, b = _apart(worst_abs, t.max_abs_error, ".3g", below=False)
        failures.append(f"max abs error {a} > {b} (output {_worst(outputs, 'max_abs_error', True)})")
    cos = _number(summary["min_cosine"])
    if t.min_cosine is not None and cos is not None and not summary["nonfinite_mismatch"] and not cos >= t.min_cosine:
        a, b = _apart(cos, t.min_cosine, ".6f", below=True)
        failures.append(f"cosine {a} < {b} (output {_worst(outputs, 'cosine', False)})")
    top1 = summary["min_top1_agreement"]
    if t.min_top1_agreement is not None and top1 is not None and top1 < t.min_top1_agreement:
        scores = [o for o in outputs if o["scores"] and o["top1_agreement"] is not None]
        a, b = _apart(top1, t.min_top1_agreement, ".3f", below=True)
        failures.append(f"top-1 agreement {a} < {b} (output {_worst(scores, 'top1_agreement', False)})")
    timing = result.get("timing")
    if t.min_speedup is not None and timing is not None and timing["speedup"] < t.min_speedup:
        a, b = _apart(timing["speedup"], t.min_speedup, ".2f", below=True)
        failures.append(f"speedup {a}x < {b}x")
    return failures


def check_model(model_path: Path, options: CheckOptions, name: Optional[str] = None) -> dict:
    """The result of checking one model (see the JSON schema, `$defs/model`).

    Raises CheckError when the check cannot be done at all; the result's
    status is then decided by the caller ("error"). Its exit_code is 2 for
    the user's input: among others a missing or corrupt MODEL or --optimized
    file, a MODEL that already has com.quake nodes (refuse_optimized), a
    QUAKE_ONNX_LIBRARY that names no file."""
    from ..modelio import check_external_data, load_graph
    from ..optimize import optimize

    started = time.perf_counter()
    model_path = resolve_model(Path(model_path))
    name = name or default_name(model_path)
    try:
        graph = load_graph(model_path)
        check_external_data(graph, model_path)
    except ModelFileError as e:
        raise CheckError(str(e), "load") from None
    refuse_optimized(graph, model_path)
    optimized_warnings = []
    if options.optimized is not None:  # checked as MODEL is, before any work
        optimized_warnings = tuned_elsewhere(_load_optimized(options.optimized), "the optimized model")
    try:
        inputs = load_inputs(
            graph,
            model_path,
            npz=options.inputs,
            npz_named=options.inputs_named,
            dims=options.dims,
            vocab=options.vocab,
            seed=options.seed,
            image_size=options.image_size,
            ranges=options.ranges,
            model_name=name,
            warn_unused_dims=options.warn_unused_dims,
            ranges_named=options.ranges_named,
        )
    except InputError as e:
        raise CheckError(str(e), "inputs") from None
    warnings = list(inputs.warnings)
    warnings += tuned_elsewhere(graph, "the model")
    graph_outputs = [o.name for o in graph.graph.output]
    libraries = options.custom_ops_libraries
    try:
        original = _session(str(model_path), graph, options.threads, False, libraries)
    except ModelFileError as e:  # a --custom-ops-library that does not load
        raise CheckError(str(e), "load") from None
    except Exception as e:
        raise CheckError(f"ONNX Runtime cannot load {model_path}: {_one_line(e)}", "load") from None

    optimized_info: dict[str, Any] = {"order": options.order}
    with tempfile.TemporaryDirectory(prefix="quake-check-") as tmp:
        if options.optimized is not None:
            fast_path = options.optimized
            optimized_info.update(source=str(fast_path), order=None, replaced=None, kept=None, per_rule=None)
            warnings += optimized_warnings
        elif options.tune:
            fast_path = Path(tmp) / "model.tuned.onnx"
            optimized_info.update(_tune(model_path, fast_path, options, warnings))
        else:
            fast_path = Path(tmp) / "model.quake.onnx"
            try:
                _, report = optimize(
                    model_path,
                    fast_path,
                    order=options.order,
                    ops=options.ops,
                    ort_level=options.ort_level,
                    min_elements=options.min_elements,
                    custom_ops_libraries=libraries,
                )
            except ModelFileError as e:
                raise CheckError(f"optimize: {e}", "optimize", e.exit_code) from None
            except Exception as e:
                raise CheckError(f"optimize failed: {type(e).__name__}: {_one_line(e)}", "optimize", 1) from None
            optimized_info.update(
                source="optimized now",
                replaced=len(report.replaced),
                kept=len(report.skipped),
                per_rule=report.counts(),
            )
            warnings.extend(report.warnings)
            if not report.replaced:
                warnings.append("nothing was replaced: the optimized model runs ONNX Runtime's own ops")
        try:
            # A given optimized model may use domains the original does not: register every library.
            fast = _session(str(fast_path), None if options.optimized else graph, options.threads, True, libraries)
        except ModelFileError as e:  # QUAKE_ONNX_LIBRARY names no file, or a library does not load
            raise CheckError(str(e), "load-optimized") from None
        except Exception as e:
            if options.optimized is not None:  # the user's file: bad input, as for MODEL
                raise CheckError(
                    f"ONNX Runtime cannot load --optimized {fast_path}: {_one_line(e)}", "load-optimized"
                ) from None
            raise CheckError(f"the optimized model does not load: {_one_line(e)}", "load-optimized", 1) from None

    del graph  # one model in memory at a time: the sessions hold their own copies
    names = [o.name for o in original.get_outputs()]
    fast_names = {o.name for o in fast.get_outputs()}
    missing = [n for n in names if n not in fast_names]
    if missing:
        raise CheckError(f"the optimized model lacks output {', '.join(missing)}", "compare", 1)

    per_output: dict[str, list] = {n: [] for n in names}
    expected_report: dict[str, dict] = {}
    for data in inputs.sets:
        try:
            ref = original.run(names, data.feeds)
        except Exception as e:
            raise CheckError(
                f"the original model does not run on {data.name} inputs: {_one_line(e)}"
                + ("; set --vocab or --dim" if inputs.source == "generated" else ""),
                "run",
            ) from None
        try:
            out = fast.run(names, data.feeds)
        except Exception as e:
            raise CheckError(f"the optimized model fails to run: {_one_line(e)}", "run-optimized", 1) from None
        excuse_nan = not cmp.has_nan(data.feeds)
        for n, r, o in zip(names, ref, out):
            try:
                per_output[n].append(cmp.compare(n, r, o, options.top_k, excuse_nan=excuse_nan))
            except ValueError as e:
                raise CheckError(str(e), "compare", 1) from None
            if excuse_nan and _nan_only_in_original(r, o):
                warnings.append(
                    f"output {n} on {data.name} inputs is NaN everywhere in the original and numbers in the "
                    "optimized model, as fully masked rows give (NaN in ONNX Runtime, 0 in the com.quake ops); "
                    "with nothing else of it to compare this is not excused (docs/zoo.md): give inputs in which "
                    "some rows are not fully masked"
                )
            if n in data.expected:
                _against_expected(n, data.expected[n], r, o, data.name, expected_report, warnings)
    unlisted = [n for n in names if n not in graph_outputs]
    if unlisted:
        warnings.append(f"outputs not in the graph's list: {', '.join(unlisted)}")

    outputs = []
    for n in names:
        entry = cmp.merge(per_output[n]).to_dict()
        if n in expected_report:
            entry["expected"] = expected_report[n]
        outputs.append(entry)
    repaired = [o for o in outputs if o["original_nan"]]
    if repaired:
        warnings.append(
            f"the original gives NaN where the optimized model gives numbers: "
            f"{sum(o['original_nan'] for o in repaired)} elements (output {', '.join(o['name'] for o in repaired)}); "
            "not counted as a mismatch: a fully masked Softmax row (all -inf) is NaN in ONNX Runtime and 0 in the "
            "com.quake ops (docs/ops.md)"
        )

    timing = measure(
        original, fast, inputs.sets[0].feeds, threads=options.threads, warmup=options.warmup, runs=options.runs
    )
    from .._library import selected_isa

    result = {
        "name": name,
        "model": str(model_path),
        "status": "pass",
        "reason": None,
        "failures": [],
        "stage": None,
        "inputs": {
            "source": inputs.source,
            "sets": len(inputs.sets),
            "seed": inputs.seed,
            "shapes": {k: list(v.shape) for k, v in inputs.sets[0].feeds.items()},
            "dims": dict(inputs.dims),
            "notes": list(inputs.notes),
        },
        "optimized": optimized_info,
        "isa": selected_isa(),
        "outputs": outputs,
        "timing": timing.to_dict(),
        "warnings": warnings,
    }
    result["summary"] = summarize(outputs)
    finish(result, options.thresholds)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def refuse_optimized(graph, model_path: Path) -> None:
    """Raises CheckError (exit 2) when MODEL already has com.quake nodes: check
    compares a model that runs ONNX Runtime's own ops with its optimized copy,
    and an optimized model as MODEL has no such reference."""
    from ..sessions import quake_ops

    ops = quake_ops(graph)
    if ops:
        raise CheckError(
            f"{model_path} already has com.quake nodes ({', '.join(ops)}): it is an optimized model, and check "
            "compares a model running ONNX Runtime's own ops with its optimized copy; check the model it was "
            f"made from, with this one as --optimized (quake-onnx check ORIGINAL.onnx --optimized {model_path})",
            "load",
        )


def _load_optimized(path: Path):
    """The graph of --optimized's file, through MODEL's checks: a missing,
    corrupt or truncated file, or missing external data, is bad input (exit 2)."""
    from ..modelio import check_external_data, load_graph

    try:
        graph = load_graph(path)
        check_external_data(graph, path)
    except ModelFileError as e:
        raise CheckError(f"--optimized: {e}", "load") from None
    return graph


def tuned_elsewhere(model, what: str) -> list[str]:
    """A warning when `model` was tuned (quake_onnx.tuned_on) on another CPU model than this one."""
    from ..bench.machine import cpu_model
    from ..tuning.report import TUNED_ON

    tuned_on = next((p.value for p in model.metadata_props if p.key == TUNED_ON), None)
    here = cpu_model()
    if tuned_on is None or tuned_on == here:
        return []
    return [
        f"{what} was tuned on {tuned_on}, this CPU is {here}: its choices were measured there "
        "(re-tune the original here with `quake-onnx tune`)"
    ]


def _tune(model_path: Path, dest: Path, options: CheckOptions, warnings: list) -> dict:
    """`quake-onnx tune` into `dest`, on the inputs the check uses, to the check's accuracy thresholds."""
    from ..tuning import tune

    th = options.thresholds
    tolerance = {"min_cosine": th.min_cosine, "max_abs_error": th.max_abs_error}
    tolerance["min_top1_agreement"] = th.min_top1_agreement
    if all(v is None for v in tolerance.values()):
        tolerance = {}  # tune's default
    try:
        _, report = tune(
            model_path,
            dest,
            inputs=options.inputs,
            dims=options.dims,
            vocab=options.vocab,
            seed=options.seed,
            image_size=options.image_size,
            ranges=options.ranges,
            threads=options.threads,
            budget=options.tune_budget,
            attention_precision=options.tune_attention_precision,
            custom_ops_libraries=options.custom_ops_libraries,
            **tolerance,
        )
    except ModelFileError as e:
        raise CheckError(f"tune: {e}", "tune", e.exit_code) from None
    except Exception as e:
        raise CheckError(f"tune failed: {type(e).__name__}: {_one_line(e)}", "tune", 1) from None
    warnings.extend(report["warnings"])
    replaced = [n for n in report["nodes"] if n["decision"] == "replaced"]
    per_rule: dict = {}
    for n in replaced:
        per_rule[n["rule"]] = per_rule.get(n["rule"], 0) + 1
    speedup = report["final"]["speedup"]
    if report["result"] == "original":
        warnings.append(f"tune kept the original: {report['reason']}")
    return {
        "source": "tuned now",
        "order": None,
        "replaced": len(replaced),
        "kept": len(report["nodes"]) - len(replaced),
        "per_rule": per_rule,
        "tune": {
            "result": report["result"],
            "reason": report["reason"],
            "configuration": report["configuration"],
            "speedup": speedup,
            "budget": report["budget"]["seconds"],
            "seconds": report["seconds"],
            "attention_precision": options.tune_attention_precision,
        },
    }


def finish(result: dict, thresholds: Thresholds) -> None:
    """Sets status, failures, reason and `accurate` from the thresholds."""
    result["thresholds"] = thresholds.to_dict()
    result["failures"] = judge(result, thresholds)
    result["accurate"] = not judge(result, thresholds.accuracy_only())
    result["status"] = "fail" if result["failures"] else "pass"
    result["reason"] = "; ".join(result["failures"]) or None


def _against_expected(name, expected, ref, out, set_name, report, warnings) -> None:
    if expected.shape != ref.shape:
        warnings.append(
            f"{set_name}: recorded output {name} has shape {list(expected.shape)}, the model gives {list(ref.shape)}"
        )
        return
    e = np.asarray(expected, np.float64)
    orig_err = float(np.nanmax(np.abs(np.asarray(ref, np.float64) - e))) if e.size else 0.0
    opt_err = float(np.nanmax(np.abs(np.asarray(out, np.float64) - e))) if e.size else 0.0
    entry = report.setdefault(
        name, {"original_max_abs_error": 0.0, "optimized_max_abs_error": 0.0, "original_matches": True}
    )
    entry["original_max_abs_error"] = max(entry["original_max_abs_error"], orig_err)
    entry["optimized_max_abs_error"] = max(entry["optimized_max_abs_error"], opt_err)
    if not np.allclose(ref, expected, rtol=ZOO_RTOL, atol=ZOO_ATOL, equal_nan=True):
        entry["original_matches"] = False
        warnings.append(
            f"{set_name}: ONNX Runtime's own output {name} differs from the recorded one "
            f"(max abs {orig_err:.3g}); the data set may not belong to this model"
        )


def default_name(model_path: Path, root: Optional[Path] = None) -> str:
    """The folder of a model-zoo `model.onnx`, else the file without .onnx;
    relative to `root` when given."""
    base = model_path.parent if model_path.name == "model.onnx" else model_path.with_suffix("")
    if root is not None:
        try:
            rel = base.relative_to(root)
            return rel.as_posix() if str(rel) != "." else root.name
        except ValueError:
            pass
    return base.name


def error_result(
    model_path: Path,
    name: str,
    stage: Optional[str],
    reason: str,
    status: str = "error",
    thresholds: Optional[Thresholds] = None,
    seconds: float = 0.0,
) -> dict:
    return {
        "name": name,
        "model": str(model_path),
        "status": status,
        "reason": reason,
        "failures": [reason],
        "stage": stage,
        "inputs": None,
        "optimized": None,
        "isa": None,
        "outputs": [],
        "timing": None,
        "warnings": [],
        "summary": None,
        "accurate": False,
        "thresholds": (thresholds or Thresholds()).to_dict(),
        "seconds": round(seconds, 3),
    }


def skipped_result(model_path: Path, name: str, reason: str, thresholds: Optional[Thresholds] = None) -> dict:
    """A model the manifest skips (`skip = "reason"`): listed, not run, not in S(t)."""
    result = error_result(model_path, name, None, reason, status="skipped", thresholds=thresholds)
    result["failures"] = []
    return result


def check_safely(model_path: Path, options: CheckOptions, name: str) -> dict:
    """check_model that never raises: what went wrong becomes an error result."""
    started = time.perf_counter()
    try:
        return check_model(model_path, options, name)
    except CheckError as e:
        return error_result(
            model_path,
            name,
            e.stage,
            _one_line(e),
            thresholds=options.thresholds,
            seconds=time.perf_counter() - started,
        )
    except MemoryError:
        return error_result(
            model_path,
            name,
            "run",
            "out of memory",
            thresholds=options.thresholds,
            seconds=time.perf_counter() - started,
        )
    except Exception as e:  # a bug or an ORT failure nobody foresaw: still a reported failure
        return error_result(
            model_path,
            name,
            "internal",
            f"{type(e).__name__}: {_one_line(e)}",
            thresholds=options.thresholds,
            seconds=time.perf_counter() - started,
        )
