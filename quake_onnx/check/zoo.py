"""`quake-onnx zoo`: every model under a folder, each checked in a process of
its own, with a shard of the list per CI job and a headline score."""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from multiprocessing import forkserver
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable, Optional, Sequence

from .runner import CheckOptions, Thresholds, default_name, error_result, judge

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
    Skipped: *.quake.onnx (what `optimize` writes: already rewritten) and
    hidden folders (.git, temporary files of interrupted writes)."""
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
    """"i/n" with 1 <= i <= n, as CI matrices count."""
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


def _child(conn, path: str, name: str, options: CheckOptions) -> None:
    from .runner import check_safely

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
) -> list[dict]:
    """Results in the order of `entries`. Each model runs in a fresh process
    (so one model is in memory per process and a crash or a hang takes only
    its own result down), at most `jobs` at a time."""
    ctx = _context()
    pending = list(entries)
    running: dict = {}  # conn -> (entry, process, start)
    results: dict[Entry, dict] = {}

    def done(entry: Entry, result: dict) -> None:
        results[entry] = result
        on_done(entry, result)

    try:
        while pending or running:
            while pending and len(running) < max(1, jobs):
                entry = pending.pop(0)
                parent, child = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_child, args=(child, str(entry.path), entry.name, options), daemon=True)
                proc.start()
                child.close()
                running[parent] = (entry, proc, time.monotonic())
                on_start(entry)
            now = time.monotonic()
            deadlines = [start + timeout - now for _, _, start in running.values()] if timeout else []
            wait_for = max(0.0, min(deadlines)) if deadlines else None
            ready = wait(list(running), timeout=wait_for)
            for conn in list(running):
                entry, proc, start = running[conn]
                elapsed = time.monotonic() - start
                if conn in ready:
                    try:
                        result = conn.recv()
                    except EOFError:  # the process died before it sent anything
                        proc.join()
                        result = error_result(entry.path, entry.name, "crash", _death(proc.exitcode),
                                              thresholds=options.thresholds, seconds=elapsed)
                    proc.join()
                elif timeout and elapsed >= timeout:
                    proc.kill()
                    proc.join()
                    result = error_result(entry.path, entry.name, "timeout", f"timed out after {timeout:g} s",
                                          status="timeout", thresholds=options.thresholds, seconds=elapsed)
                else:
                    continue
                conn.close()
                del running[conn]
                done(entry, result)
    finally:
        for conn, (_, proc, _) in running.items():  # interrupted: leave no orphan behind
            proc.kill()
            proc.join()
            conn.close()
    return [results[e] for e in entries]


def _death(exitcode: Optional[int]) -> str:
    if exitcode is not None and exitcode < 0:
        import signal

        try:
            return f"the check process was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            pass
    return f"the check process exited with code {exitcode} without a result"


def within(result: dict, thresholds: Thresholds) -> bool:
    """The model ran and its outputs hold every accuracy threshold."""
    if result["status"] in ("error", "timeout") or result.get("summary") is None:
        return False
    return not judge(result, thresholds.accuracy_only())


def score(results: Sequence[dict], thresholds: Thresholds, penalty: float = DEFAULT_PENALTY) -> Optional[dict]:
    """S(t) = exp((1/N) * sum_i log s_i), s_i = model i's speedup when it is
    within tolerance t, else `penalty` (docs/zoo.md). None for no models."""
    n = len(results)
    if n == 0:
        return None

    def value(th: Thresholds) -> tuple:
        logs, ok, ok_logs = [], 0, []
        for r in results:
            if within(r, th) and r["timing"] and r["timing"]["speedup"] > 0:
                ok += 1
                logs.append(math.log(r["timing"]["speedup"]))
                ok_logs.append(logs[-1])
            else:
                logs.append(math.log(penalty))
        geo_ok = math.exp(sum(ok_logs) / len(ok_logs)) if ok_logs else None
        return math.exp(sum(logs) / n), ok, sum(logs), geo_ok

    s, ok, log_sum, geo_ok = value(thresholds)
    curve = []
    for t in CURVE:
        th = Thresholds(t, thresholds.min_cosine, thresholds.min_top1_agreement)
        v = value(th)
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
