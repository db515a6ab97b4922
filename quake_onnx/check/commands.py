"""The bodies of `quake-onnx check` and `quake-onnx zoo`; cli.py declares the
options. Both return the exit code: 0 every threshold holds, 1 one fails
(or a model could not be checked, in a zoo), 2 bad usage or input."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from .. import modelio, writes
from . import reports
from .runner import CheckError, CheckOptions, check_model, resolve_model
from .zoo import DEFAULT_PENALTY, discover, parse_shard, run_models, score, shard as take_shard


def _error(message: str) -> None:
    typer.echo(f"error: {' '.join(message.split())}", err=True)


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    # Not a terminal means a CI log or a file: wide enough that tables do not fold.
    return console if console.is_terminal else Console(stderr=stderr, width=160)


def _input_files(models: list[Path], others: list[Optional[Path]]) -> writes.InputFiles:
    """The models, the files they reference and the other files read: no report may be one."""
    inputs = writes.InputFiles()
    for path in models:
        if not path.is_file():
            continue
        inputs.add(path, "a model this command checks")
        try:
            inputs.add_model(modelio.load_graph(path), path, whose="a checked")
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
        if path is None or str(path) == "-":
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
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return None
    try:
        writes.write_bytes_atomic(text.encode(), path)
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
    to_stdout = json_out is not None and str(json_out) == "-"
    console, err = _console(to_stdout), _console(True)
    try:
        result = check_model(model, options)
    except CheckError as e:
        _error(str(e))
        return e.exit_code
    opt = result["optimized"]
    if opt["source"] == "optimized now":
        rules = ", ".join(f"{k} x{v}" for k, v in sorted(opt["per_rule"].items())) or "nothing"
        console.print(f"optimized now (order {opt['order']}): replaced {rules}", soft_wrap=True, highlight=False)
    else:
        console.print(f"optimized model {escape(opt['source'])}", soft_wrap=True, highlight=False)
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
) -> int:
    if not root.exists():
        _error(f"{root} does not exist")
        return 2
    if not root.is_dir():
        _error(f"{root} is not a folder (for one model use `quake-onnx check`)")
        return 2
    try:
        index, count = parse_shard(shard)
    except ValueError as e:
        _error(str(e))
        return 2
    dashes = [o for o, p in (("--json", json_out), ("--markdown", markdown), ("--junit", junit)) if p and str(p) == "-"]
    if len(dashes) > 1:
        _error(f"{' and '.join(dashes)} cannot both write to stdout")
        return 2
    entries = discover(root)
    if not entries:
        _error(f"no .onnx model under {root}")
        return 2
    reports_out = {"--json": json_out, "--markdown": markdown, "--junit": junit}
    inputs = _input_files([e.path for e in entries], []) if any(reports_out.values()) else writes.InputFiles()
    problem = _check_outputs(reports_out, inputs)
    if problem:
        _error(problem)
        return 2
    mine = take_shard(entries, index, count)
    console = _console(bool(dashes))
    err = _console(True)
    if list_only:
        for e in mine:
            typer.echo(f"{e.name}\t{e.path}")  # tab-separated for scripts; rich would expand the tab
        return 0

    started = time.perf_counter()
    results = _run_with_progress(mine, options, jobs, timeout, err, len(entries), (index, count))
    elapsed = time.perf_counter() - started
    s = score(results, options.thresholds, penalty)
    settings = {
        "threads": options.threads, "runs": options.runs, "warmup": options.warmup, "order": options.order,
        "seed": options.seed, "vocab": options.vocab, "dims": dict(options.dims), "top_k": options.top_k,
        "ort_level": options.ort_level, "thresholds": options.thresholds.to_dict(), "penalty": penalty,
        "min_score": min_score,
    }
    report = reports.zoo_report(root, results, s, shard=(index, count), jobs=jobs, timeout=timeout,
                                settings=settings, seconds=elapsed)
    console.print(reports.summary_table(report))
    for line in reports.failure_lines(report):
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    console.print(reports.score_line(s), soft_wrap=True, highlight=False)
    for r in results:
        for w in r["warnings"]:
            err.print(f"warning: {escape(r['name'])}: {escape(w)}", soft_wrap=True, highlight=False)
    for path, text in ((json_out, reports.to_json), (markdown, reports.to_markdown), (junit, reports.to_junit)):
        if path is not None:
            problem = _write(path, text(report))
            if problem:
                _error(problem)
                return 1
    failed = [r for r in results if r["status"] != "pass"]
    low_score = min_score is not None and s is not None and s["value"] < min_score
    if failed or low_score:
        parts = [f"{len(failed)} of {len(results)} models failed"] if failed else []
        parts += [f"{r['name']} ({r['reason']})" for r in failed[:3]]
        if len(failed) > 3:
            parts.append("...")
        if low_score:
            parts.append(f"S(t) {s['value']:.3f} < --min-score {min_score:g}")
        typer.echo("FAIL: " + "; ".join(parts), err=True)
        return 1
    console.print(f"PASS: {len(results)} model(s)", highlight=False)
    return 0


def _run_with_progress(entries, options, jobs, timeout, err: Console, total_models: int, shard) -> list[dict]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    n = len(entries)
    if not err.is_terminal:
        # CI logs: a line per model instead of a bar redrawn in place.
        counter = iter(range(1, n + 1))

        def line(entry, result):
            speed = f", {result['timing']['speedup']:.2f}x" if result.get("timing") else ""
            reason = f": {result['reason']}" if result["reason"] else ""
            err.print(f"[{next(counter)}/{n}] {entry.name} {result['status']}{speed}{reason}",
                      soft_wrap=True, highlight=False, markup=False)

        return run_models(entries, options, jobs=jobs, timeout=timeout, on_done=line)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task(f"zoo shard {shard[0]}/{shard[1]} ({n} of {total_models} models)", total=n)

        def started(entry):
            progress.update(task, description=f"checking {escape(entry.name)}")

        def finished(entry, result):
            progress.advance(task)
            progress.console.print(f"{escape(entry.name)}: {result['status']}", highlight=False)

        return run_models(entries, options, jobs=jobs, timeout=timeout, on_start=started, on_done=finished)
