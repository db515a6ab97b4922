"""`quake-onnx zoo`: every model under a folder, each checked in a process of
its own, with a shard of the list per CI job and a headline score."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing import forkserver
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable, Optional, Sequence

from .runner import CheckOptions, Thresholds, default_name, error_result, judge, skipped_result

# GraphNet's S(t) counts a sample that fails or is wrong at tolerance t as
# this speedup; the same default here.
DEFAULT_PENALTY = 0.1
# The tolerances of the score curve (max abs error), loosest first.
CURVE = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)


@dataclass(frozen=True)
class Entry:
    name: str
    path: Path


def discover(root: Path) -> list[Entry]:
    """Every *.onnx under root, sorted by path. The model-zoo layout
    (<name>/model.onnx beside test_data_set_*) is named after its folder.
    Skipped: *.quake.onnx (what `optimize` writes: already rewritten),
    hidden folders (.git, temporary files of interrupted writes) and
    folders that are symlinks (os.walk's default: no link cycle)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f.endswith(".onnx") and not f.endswith(".quake.onnx") and not f.startswith("."):
                found.append(Path(dirpath) / f)
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    entries, seen = [], set()
    for path in found:
        name = default_name(path, root)
        if name in seen:  # a.onnx beside a/model.onnx
            name = path.relative_to(root).as_posix()
        seen.add(name)
        entries.append(Entry(name, path))
    return entries


def parse_shard(value: str) -> tuple[int, int]:
    """ "i/n" with 1 <= i <= n, as CI matrices count."""
    i, slash, n = value.partition("/")
    if not slash or not i.strip().isdigit() or not n.strip().isdigit():
        raise ValueError(f"--shard {value!r}: expected i/n, e.g. 2/4")
    i_, n_ = int(i), int(n)
    if n_ < 1 or not 1 <= i_ <= n_:
        raise ValueError(f"--shard {value!r}: i must be between 1 and n (n >= 1)")
    return i_, n_


def shard(entries: Sequence[Entry], index: int, count: int) -> list[Entry]:
    """Round robin over the sorted list: deterministic, every model in exactly
    one shard, and big neighbouring models (one folder) land in different shards."""
    return [e for k, e in enumerate(entries) if k % count == index - 1]


def _context():
    # forkserver: children fork from a server that imported the checker once
    # (cheap), not from this process with its progress-bar thread (unsafe).
    # The server starts as `python -c ...`, which puts the working directory
    # first on sys.path (Python 3.11 drops the sys.path it is handed), so run
    # from a source checkout it would import that checkout's quake_onnx, which
    # has no compiled library. PYTHONSAFEPATH (3.11+) keeps the directory off;
    # before 3.11, spawn, which restores this process's sys.path in the child.
    if "forkserver" in mp.get_all_start_methods() and sys.version_info >= (3, 11):
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["quake_onnx.check.runner"])
        saved = os.environ.get("PYTHONSAFEPATH")
        os.environ["PYTHONSAFEPATH"] = "1"
        try:
            forkserver.ensure_running()
        finally:
            if saved is None:
                del os.environ["PYTHONSAFEPATH"]
            else:
                os.environ["PYTHONSAFEPATH"] = saved
        return ctx
    return mp.get_context("spawn")


def _child(conn, path: str, name: str, options: CheckOptions, scratch: str) -> None:
    from .runner import check_safely

    # Its temporaries go in a folder the parent removes however this process ends (killed at a timeout, a crash).
    tempfile.tempdir = scratch
    os.environ["TMPDIR"] = scratch
    try:
        conn.send(check_safely(Path(path), options, name))
    finally:
        conn.close()


def run_models(
    entries: Sequence[Entry],
    options: CheckOptions,
    *,
    jobs: int = 1,
    timeout: Optional[float] = None,
    on_start: Callable[[Entry], None] = lambda e: None,
    on_done: Callable[[Entry, dict], None] = lambda e, r: None,
    per_model: Optional[dict[str, CheckOptions]] = None,
    skip: Optional[dict[str, str]] = None,
) -> list[dict]:
    """Results in the order of `entries`. Each model runs in a fresh process
    (so one model is in memory per process and a crash or a hang takes only
    its own result down), at most `jobs` at a time. `per_model` (by name)
    replaces `options` for a model; a model in `skip` (name -> reason) is
    reported as skipped without running."""
    per_model, skip = per_model or {}, skip or {}
    ctx = _context()
    pending = list(entries)
    running: dict = {}  # conn -> (entry, process, start)
    results: dict[Entry, dict] = {}

    def done(entry: Entry, result: dict) -> None:
        results[entry] = result
        on_done(entry, result)

    def options_of(entry: Entry) -> CheckOptions:
        return per_model.get(entry.name, options)

    for entry in [e for e in pending if e.name in skip]:
        pending.remove(entry)
        done(entry, skipped_result(entry.path, entry.name, skip[entry.name], options_of(entry).thresholds))
    try:
        while pending or running:
            while pending and len(running) < max(1, jobs):
                entry = pending.pop(0)
                parent, child = ctx.Pipe(duplex=False)
                scratch = tempfile.mkdtemp(prefix="quake-zoo-job-")
                proc = ctx.Process(
                    target=_child, args=(child, str(entry.path), entry.name, options_of(entry), scratch), daemon=True
                )
                proc.start()
                child.close()
                running[parent] = (entry, proc, time.monotonic(), scratch)
                on_start(entry)
            now = time.monotonic()
            deadlines = [start + timeout - now for _, _, start, _ in running.values()] if timeout else []
            wait_for = max(0.0, min(deadlines)) if deadlines else None
            ready = wait(list(running), timeout=wait_for)
            for conn in list(running):
                entry, proc, start, scratch = running[conn]
                elapsed = time.monotonic() - start
                if conn in ready:
                    try:
                        result = conn.recv()
                    except EOFError:  # the process died before it sent anything
                        proc.join()
                        result = error_result(
                            entry.path,
                            entry.name,
                            "crash",
                            _death(proc.exitcode),
                            thresholds=options_of(entry).thresholds,
                            seconds=elapsed,
                        )
                    proc.join()
                elif timeout and elapsed >= timeout:
                    proc.kill()
                    proc.join()
                    result = error_result(
                        entry.path,
                        entry.name,
                        "timeout",
                        f"timed out after {timeout:g} s",
                        status="timeout",
                        thresholds=options_of(entry).thresholds,
                        seconds=elapsed,
                    )
                else:
                    continue
                conn.close()
                shutil.rmtree(scratch, ignore_errors=True)
                del running[conn]
                done(entry, result)
    finally:
        for conn, (_, proc, _, scratch) in running.items():  # interrupted: leave no orphan behind
            proc.kill()
            proc.join()
            conn.close()
            shutil.rmtree(scratch, ignore_errors=True)
    return [results[e] for e in entries]


def _death(exitcode: Optional[int]) -> str:
    if exitcode is not None and exitcode < 0:
        import signal

        try:
            return f"the check process was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            pass
    return f"the check process exited with code {exitcode} without a result"


def within(result: dict, thresholds: Optional[Thresholds] = None) -> bool:
    """The model ran and its outputs hold every accuracy threshold: its own
    (a manifest may set them per model) unless `thresholds` is given."""
    if result["status"] in ("error", "timeout", "skipped") or result.get("summary") is None:
        return False
    th = thresholds if thresholds is not None else own_thresholds(result)
    return not judge(result, th.accuracy_only())


def own_thresholds(result: dict, run: Optional[Thresholds] = None) -> Thresholds:
    """The thresholds the model was held to (the run's when it records none)."""
    recorded = result.get("thresholds")
    return Thresholds(**recorded) if recorded else (run or Thresholds())


def scored(results: Sequence[dict]) -> list[dict]:
    """The results S(t) counts: every model but the skipped ones."""
    return [r for r in results if r["status"] != "skipped"]


def score(results: Sequence[dict], thresholds: Thresholds, penalty: float = DEFAULT_PENALTY) -> Optional[dict]:
    """S(t) = exp((1/N) * sum_i log s_i), s_i = model i's speedup when it is
    within tolerance t, else `penalty` (docs/zoo.md); skipped models are not
    among the N. t is each model's own accuracy thresholds (`thresholds`,
    the run's, unless a manifest set others for it); the curve replaces the
    max abs error of every model by each of CURVE. None for no models."""
    results = scored(results)
    n = len(results)
    if n == 0:
        return None

    def value(max_abs: Optional[float] = None, replace: bool = False) -> tuple:
        logs, ok, ok_logs = [], 0, []
        for r in results:
            own = own_thresholds(r, thresholds)
            th = Thresholds(max_abs, own.min_cosine, own.min_top1_agreement) if replace else own
            speedup = r["timing"]["speedup"] if r["timing"] else None
            if within(r, th) and isinstance(speedup, (int, float)) and speedup > 0 and math.isfinite(speedup):
                ok += 1
                logs.append(math.log(speedup))
                ok_logs.append(logs[-1])
            else:
                logs.append(math.log(penalty))
        geo_ok = math.exp(sum(ok_logs) / len(ok_logs)) if ok_logs else None
        return math.exp(sum(logs) / n), ok, sum(logs), geo_ok

    s, ok, log_sum, geo_ok = value()
    curve = []
    for t in CURVE:
        v = value(t, replace=True)
        curve.append({"max_abs_error": t, "value": v[0], "within": v[1]})
    return {
        "value": s,
        "models": n,
        "within": ok,
        "geomean_speedup_within": geo_ok,
        "penalty": penalty,
        "log_sum": log_sum,
        "tolerance": thresholds.accuracy_only().to_dict(),
        "curve": curve,
    }
