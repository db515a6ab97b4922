"""The bodies of `quake-onnx check` and `quake-onnx zoo`; cli.py declares the
options. Both return the exit code: 0 every threshold holds, 1 one fails
(or a model could not be checked, in a zoo), 2 bad usage or input."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from .. import modelio, writes
from .._cli_output import make_console
from . import manifest, reports
from .runner import CheckError, CheckOptions, Thresholds, check_model, resolve_model
from .zoo import DEFAULT_PENALTY, discover, parse_shard, run_models, score
from .zoo import shard as take_shard


def _error(message: str) -> None:
    typer.echo(f"error: {' '.join(message.split())}", err=True)


def _input_files(
    models: list[Path],
    others: list[Optional[Path]],
    role: str = "a model this command checks",
    whose: str = "a checked",
) -> writes.InputFiles:
    """The models, the files they reference and the other files read: no report may be one."""
    inputs = writes.InputFiles()
    for path in models:
        if not path.is_file():
            continue
        inputs.add(path, role)
        try:
            inputs.add_model(modelio.load_graph(path), path, whose=whose)
        except modelio.ModelFileError:
            pass  # not a model: its check reports that; its own path is protected
    for path in others:
        if path is not None:
            inputs.add(path, "an input file of this command")
    return inputs


def _check_outputs(paths: dict[str, Optional[Path]], inputs: writes.InputFiles) -> Optional[str]:
    """The first report path that cannot be written, as an error message."""
    seen = {}
    for option, path in paths.items():
        if path is None or writes.is_stdout(path):
            continue
        try:
            writes.check_output_path(path, f"{option} file", inputs)
        except modelio.ModelFileError as e:
            return str(e)
        key = str(path.resolve())
        if key in seen:
            return f"{seen[key]} and {option} name the same file {path}"
        seen[key] = option
    return None


def _write(path: Path, text: str) -> Optional[str]:
    try:
        writes.write_report(text, path)
    except OSError as e:
        return f"cannot write {path}: {e.strerror or e}"
    return None


def check_command(model: Path, options: CheckOptions, json_out: Optional[Path]) -> int:
    problem = None
    if json_out is not None:
        try:
            model_files = [resolve_model(model)]
        except CheckError:
            model_files = []  # the check itself says what is wrong with it
        inputs = _input_files(model_files + ([options.optimized] if options.optimized else []), [options.inputs])
        problem = _check_outputs({"--json": json_out}, inputs)
    if problem:
        _error(problem)
        return 2
    to_stdout = writes.is_stdout(json_out)
    console, err = make_console(to_stdout, wide=True), make_console(True, wide=True)
    try:
        result = check_model(model, options)
    except CheckError as e:
        _error(str(e))
        return e.exit_code
    opt = result["optimized"]
    if opt["source"] == "tuned now":
        t = opt["tune"]
        speed = f" ({t['speedup']['median']:.3f}x in tune's paired rounds)" if t["speedup"] else ""
        rules = ", ".join(f"{k} x{v}" for k, v in sorted(opt["per_rule"].items())) or "nothing"
        console.print(
            f"tuned now: {'the original kept' if t['result'] == 'original' else 'replaced ' + rules}{speed}",
            soft_wrap=True,
            highlight=False,
        )
    elif opt["source"] == "optimized now":
        rules = ", ".join(f"{k} x{v}" for k, v in sorted(opt["per_rule"].items())) or "nothing"
        console.print(f"optimized now (order {opt['order']}): replaced {rules}", soft_wrap=True, highlight=False)
    else:
        console.print(f"optimized model {escape(opt['source'])}", soft_wrap=True, highlight=False)
    for note in result["inputs"]["notes"]:
        console.print(f"note: {escape(note)}", soft_wrap=True, highlight=False)
    console.print(reports.check_table(result))
    console.print(reports.timing_line(result), soft_wrap=True, highlight=False)
    for w in result["warnings"]:
        err.print(f"warning: {escape(w)}", soft_wrap=True, highlight=False)
    if json_out is not None:
        problem = _write(json_out, reports.to_json(result))
        if problem:
            _error(problem)
            return 1
    if result["failures"]:
        typer.echo(f"FAIL: {result['reason']}", err=True)
        return 1
    console.print("PASS", highlight=False)
    return 0


def apply_settings(
    options: CheckOptions, settings: manifest.Settings, explicit: frozenset = frozenset()
) -> CheckOptions:
    """`options` (the command line, typer's defaults included) with a manifest's
    settings for one model: a setting replaces an option unless the option was
    passed on the command line (`explicit`, parameter names); dims merge name
    by name, the command line's (all passed on it) over the manifest's."""

    def pick(name: str, option, setting):
        return option if name in explicit or setting is None else setting

    th = options.thresholds
    thresholds = Thresholds(*(pick(k, getattr(th, k), getattr(settings, k)) for k in manifest.THRESHOLD_KEYS))
    return dataclasses.replace(
        options,
        thresholds=thresholds,
        dims={**settings.dims, **options.dims},
        vocab=pick("vocab", options.vocab, settings.vocab),
        image_size=pick("image_size", options.image_size, settings.image_size),
        inputs=settings.inputs if settings.inputs is not None else options.inputs,
        inputs_named=options.inputs_named if settings.inputs is None else "the manifest's inputs",
        ranges={**options.ranges, **settings.ranges},
    )


def zoo_command(
    root: Path,
    options: CheckOptions,
    *,
    jobs: int,
    shard: str,
    timeout: Optional[float],
    json_out: Optional[Path],
    markdown: Optional[Path],
    junit: Optional[Path],
    list_only: bool,
    penalty: float = DEFAULT_PENALTY,
    min_score: Optional[float] = None,
    config: Optional[Path] = None,
    explicit: frozenset = frozenset(),
) -> int:
    if not root.exists():
        _error(f"{modelio.shown(root)} does not exist")
        return 2
    if not root.is_dir():
        _error(f"{modelio.shown(root)} is not a folder (for one model use `quake-onnx check`)")
        return 2
    try:
        index, count = parse_shard(shard)
    except ValueError as e:
        _error(str(e))
        return 2
    dashes = _dashes(json_out, markdown, junit)
    if len(dashes) > 1:
        _error(f"{' and '.join(dashes)} cannot both write to stdout")
        return 2
    entries = discover(root)
    if not entries:
        _error(f"no .onnx model under {root}")
        return 2
    try:
        found = manifest.find(root, config)
        plan = manifest.load(found) if found is not None else None
        if plan is not None:
            plan.check_matches([e.name for e in entries], root)
    except manifest.ManifestError as e:
        _error(str(e))
        return 2
    reports_out = {"--json": json_out, "--markdown": markdown, "--junit": junit}
    read = [found] + ([s.inputs for _, s in plan.models] + [plan.defaults.inputs] if plan else [])
    inputs = _input_files([e.path for e in entries], read) if any(reports_out.values()) else writes.InputFiles()
    problem = _check_outputs(reports_out, inputs)
    if problem:
        _error(problem)
        return 2
    mine = take_shard(entries, index, count)
    console = make_console(bool(dashes), wide=True)
    err = make_console(True, wide=True)
    if list_only:
        for e in mine:
            typer.echo(f"{e.name}\t{e.path}")  # tab-separated for scripts; rich would expand the tab
        return 0

    options = dataclasses.replace(options, warn_unused_dims=False, ranges_named=frozenset())
    run_options = apply_settings(options, plan.defaults, explicit) if plan else options
    per_model, skip = {}, {}
    if plan is not None:
        for e in mine:
            settings = plan.settings_for(e.name)
            per_model[e.name] = dataclasses.replace(
                apply_settings(options, settings, explicit), ranges_named=plan.own_ranges(e.name)
            )
            if settings.skip:
                skip[e.name] = settings.skip
    started = time.perf_counter()
    results = _run_with_progress(mine, run_options, jobs, timeout, err, len(entries), (index, count), per_model, skip)
    elapsed = time.perf_counter() - started
    s = score(results, run_options.thresholds, penalty)
    settings = {
        "threads": options.threads,
        "runs": options.runs,
        "warmup": options.warmup,
        "order": options.order,
        "seed": options.seed,
        "vocab": run_options.vocab,
        "dims": dict(run_options.dims),
        "top_k": options.top_k,
        "ort_level": options.ort_level,
        "thresholds": run_options.thresholds.to_dict(),
        "penalty": penalty,
        "min_score": min_score,
        "image_size": run_options.image_size,
        "tune": options.tune_budget if options.tune else None,
        # What changes the optimized models: shards that differ in it must not merge
        # (tune, which measures its own choices, takes neither --ops nor --min-elements).
        "ops": sorted(options.ops) if options.ops is not None and not options.tune else None,
        "min_elements": options.min_elements if not options.tune else None,
        "tune_attention_precision": options.tune_attention_precision if options.tune else None,
        "custom_ops_libraries": [Path(p).name for p in options.custom_ops_libraries],
        "manifest": plan.describe() if plan else None,
    }
    report = reports.zoo_report(
        root, results, s, shard=(index, count), jobs=jobs, timeout=timeout, settings=settings, seconds=elapsed
    )
    used = {k for r in results for k in ((r.get("inputs") or {}).get("dims") or {})}
    unused = [k for k in options.dims if k not in used]
    tail = []
    if unused:
        tail.append(
            f"--dim {', '.join(f'{k}={options.dims[k]}' for k in unused)}: no model of this run has such a dimension"
        )
    return _finish(report, console, err, {"--json": json_out, "--markdown": markdown, "--junit": junit}, tail)


def _dashes(*paths: Optional[Path]) -> list[str]:
    names = ("--json", "--markdown", "--junit")
    return [o for o, p in zip(names, paths) if writes.is_stdout(p)]


def _finish(report: dict, console: Console, err: Console, outputs: dict, warnings: list[str]) -> int:
    """Prints the summary, writes the reports; the exit code of a zoo run."""
    results, s = report["models"], report["score"]
    min_score = report["settings"].get("min_score")
    console.print(reports.summary_table(report))
    for line in reports.failure_lines(report):
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    console.print(reports.score_line(s), soft_wrap=True, highlight=False)
    for r in results:
        for w in r["warnings"]:
            err.print(f"warning: {escape(r['name'])}: {escape(w)}", soft_wrap=True, highlight=False)
    for w in warnings:
        err.print(f"warning: {escape(w)}", soft_wrap=True, highlight=False)
    writers = {"--json": reports.to_json, "--markdown": reports.to_markdown, "--junit": reports.to_junit}
    for option, path in outputs.items():
        if path is not None:
            problem = _write(path, writers[option](report))
            if problem:
                _error(problem)
                return 1
    failed = [r for r in results if r["status"] not in ("pass", "skipped")]
    skipped = sum(r["status"] == "skipped" for r in results)
    low_score = min_score is not None and s is not None and s["value"] < min_score
    if failed or low_score:
        parts = [f"{len(failed)} of {len(results) - skipped} models failed"] if failed else []
        parts += [f"{r['name']} ({r['reason']})" for r in failed[:3]]
        if len(failed) > 3:
            parts.append("...")
        if low_score:
            parts.append(f"S(t) {s['value']:.3f} < --min-score {min_score:g}")
        typer.echo("FAIL: " + "; ".join(parts), err=True)
        return 1
    console.print(
        f"PASS: {len(results) - skipped} model(s)" + (f", {skipped} skipped" if skipped else ""), highlight=False
    )
    return 0


def _merged_models(report: dict, paths: list[Path]) -> list[Path]:
    """Every file a merged report's model path may name. A shard stores its
    models' paths as it was given them, relative to the folder it ran in,
    which the merge does not know (CI merges in a job of its own): such a path
    is taken from the working folder, from each shard report's folder and
    from the folders above it, where the shard most likely ran."""
    bases = [Path.cwd()]
    for p in paths:
        folder = writes.absolute(p).parent
        bases += [folder, *folder.parents]
    found: dict[str, Path] = {}
    for m in report["models"]:
        model = Path(m["model"])
        for candidate in [model] if model.is_absolute() else [base / model for base in bases]:
            if candidate.is_file():
                found.setdefault(os.path.realpath(candidate), candidate)
    return list(found.values())


def merge_command(
    paths: list[Path], *, json_out: Optional[Path], markdown: Optional[Path], junit: Optional[Path]
) -> int:
    """`quake-onnx zoo merge`: shard reports in, the report of the whole run out."""
    from .merge import MergeError, merge_reports, read_report

    dashes = _dashes(json_out, markdown, junit)
    if len(dashes) > 1:
        _error(f"{' and '.join(dashes)} cannot both write to stdout")
        return 2
    try:
        named = [(p, read_report(p)) for p in paths]
        report, warnings = merge_reports(named)
    except MergeError as e:
        _error(str(e))
        return 2
    except (TypeError, KeyError, AttributeError, ValueError) as e:  # a field of an edited report
        _error(f"the shard reports are not as `quake-onnx zoo --json` writes them ({type(e).__name__}: {e})")
        return 2
    outputs = {"--json": json_out, "--markdown": markdown, "--junit": junit}
    inputs = writes.InputFiles()
    if any(outputs.values()):
        inputs = _input_files(
            _merged_models(report, paths),
            [],
            role="a model the merged reports checked",
            whose="a merged report's",
        )
        for p in paths:
            inputs.add(p, "a shard report this command merges")
    problem = _check_outputs(outputs, inputs)
    if problem:
        _error(problem)
        return 2
    return _finish(report, make_console(bool(dashes), wide=True), make_console(True, wide=True), outputs, warnings)


def _run_with_progress(
    entries, options, jobs, timeout, err: Console, total_models: int, shard, per_model=None, skip=None
) -> list[dict]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    n = len(entries)
    if not err.is_terminal:
        # CI logs: a line per model instead of a bar redrawn in place.
        counter = iter(range(1, n + 1))

        def line(entry, result):
            speed = f", {result['timing']['speedup']:.2f}x" if result.get("timing") else ""
            reason = f": {result['reason']}" if result["reason"] else ""
            err.print(
                f"[{next(counter)}/{n}] {entry.name} {result['status']}{speed}{reason}",
                soft_wrap=True,
                highlight=False,
                markup=False,
            )

        return run_models(entries, options, jobs=jobs, timeout=timeout, on_done=line, per_model=per_model, skip=skip)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(f"zoo shard {shard[0]}/{shard[1]} ({n} of {total_models} models)", total=n)

        def started(entry):
            progress.update(task, description=f"checking {escape(entry.name)}")

        def finished(entry, result):
            progress.advance(task)
            progress.console.print(f"{escape(entry.name)}: {result['status']}", highlight=False)

        return run_models(
            entries,
            options,
            jobs=jobs,
            timeout=timeout,
            on_start=started,
            on_done=finished,
            per_model=per_model,
            skip=skip,
        )
