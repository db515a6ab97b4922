"""Paired timing: is one model faster than another on this machine, and by how
much beyond the noise?

The method of benchmarks/models.py, which `quake-onnx tune` uses for every
decision it makes on speed:

- interleaved rounds: per round a block of runs of every variant, the variant
  order rotated each round so none always follows the same one;
- several sessions per variant (default 2), round r timing instance r mod K:
  two sessions of the same model can differ by a few percent for their whole
  life (buffer placement), and taking turns spreads that over the rounds;
- after each block, a wait until the block's session has stopped using the
  CPU (`settle`): ONNX Runtime's intra-op pool threads spin for a while after
  a Run (about 40 ms with ORT 1.32 on Zen 4) and would take a core from the
  next block's session; two sessions at 2 threads timed back to back without
  the wait read 1.6-2x slower, each in turn;
- a block during which other processes used more than `max_foreign` of a
  core (from /proc/stat, less this process's CPU time) is thrown away and
  run again after a pause, up to `retries` times;
- the speedup is paired: per round the ratio of the two variants' block
  medians, then the median of those ratios over rounds with their quartiles,
  so a drift of the machine's speed between rounds cancels.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence


def busy_seconds() -> float:
    """CPU time the whole machine has spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def foreign_load(t_wall: float, t_busy: float, t_own: float) -> float:
    """Cores' worth of CPU used by other processes since the marks."""
    wall = time.perf_counter() - t_wall
    return max(0.0, (busy_seconds() - t_busy) - (time.process_time() - t_own)) / wall if wall > 0 else 0.0


def settle(step: float = 0.005, idle: float = 0.1, limit: float = 0.5) -> float:
    """Sleeps until this process's threads use less than `idle` of a core over
    a `step` (seconds), at most `limit` seconds: until the intra-op pool of the
    session just timed stops spinning (module docstring). Returns the seconds
    waited; a process whose pools never spin (1 thread) waits one step."""
    start = time.perf_counter()
    while True:
        own = time.process_time()
        time.sleep(step)
        waited = time.perf_counter() - start
        if time.process_time() - own < idle * step or waited >= limit:
            return waited


def rotated_batches(batches: Mapping[str, Callable[[], float]], rounds: int) -> dict:
    """The simple form of the method, for benchmarks timing batches of their own:
    per round one call of every `batches` entry (a batch, returning its time),
    the order rotated by round, settle() before the first and after each (the
    caller's warm-ups may have left a pool spinning). Returns name -> its times."""
    names = list(batches)
    times: dict = {k: [] for k in names}
    settle()
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            times[k].append(batches[k]())
            settle()
    return times


def session_batches(sessions: Mapping[str, object], feeds: dict, budget: float) -> tuple[dict, int]:
    """For rotated_batches: per session (objects with run(None, feeds)) a batch
    of runs returning the seconds per run, after warm-ups (3 runs each, a
    settle() after each session's); and the runs per batch, the same for
    every session, sized to about `budget` seconds on the first one."""

    def timed(sess, runs: int) -> float:
        start = time.perf_counter()
        for _ in range(runs):
            sess.run(None, feeds)
        return (time.perf_counter() - start) / runs

    for sess in sessions.values():
        timed(sess, 3)
        settle()
    first = next(iter(sessions.values()))
    runs = max(3, int(budget / max(timed(first, 3), 1e-6)))
    return {k: (lambda sess=sess: timed(sess, runs)) for k, sess in sessions.items()}, runs


@dataclass
class Rounds:
    """What time_rounds measured, per variant."""

    medians: dict  # variant -> block median of each round (seconds)
    runs: dict  # variant -> runs timed
    discarded: int  # blocks thrown away because other processes used the CPU

    def fastest_ms(self) -> dict:
        return {k: min(v) * 1e3 for k, v in self.medians.items()}


def time_rounds(
    sessions: Mapping[object, Sequence],
    feeds: dict,
    rounds: int,
    min_time: float,
    min_runs: int,
    *,
    max_foreign: float = 0.1,
    retries: int = 4,
    pause: Callable[[int], float] = lambda attempt: 1.0 + attempt,
    warmup: int = 2,
) -> Rounds:
    """Interleaved rounds over `sessions` (variant -> its instances, objects
    with run(None, feeds)). A block is at least `min_runs` runs and
    `min_time` seconds of one instance; its median is the round's figure.
    A block disturbed by other processes (see the module) is run again after
    sleeping pause(attempt) seconds, up to `retries` times."""
    keys = list(sessions)
    for k in keys:  # warm-up: arena growth, prepacking, page faults
        for inst in sessions[k]:
            for _ in range(warmup):
                inst.run(None, feeds)
    settle()  # the last warmed-up session's pool would spin into round 0's first block
    medians: dict = {k: [] for k in keys}
    count = {k: 0 for k in keys}
    discarded = 0
    clock = time.perf_counter
    proc_stat = Path("/proc/stat").exists()
    for r in range(rounds):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            s = sessions[k][r % len(sessions[k])]
            for attempt in range(retries + 1):
                marks = (clock(), busy_seconds(), time.process_time()) if proc_stat else None
                times, start = [], clock()
                while len(times) < min_runs or clock() - start < min_time:
                    t0 = clock()
                    s.run(None, feeds)
                    times.append(clock() - t0)
                if not marks or attempt == retries or foreign_load(*marks) <= max_foreign:
                    break
                discarded += 1
                time.sleep(pause(attempt))
            medians[k].append(statistics.median(times))
            count[k] += len(times)
            settle()
    return Rounds(medians, count, discarded)


@dataclass(frozen=True)
class Paired:
    """Per-round ratios time(base) / time(variant): above 1, the variant is faster."""

    ratios: tuple

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def quartiles(self) -> tuple[float, float]:
        """(q1, q3); with fewer than 4 rounds the smallest and largest ratio."""
        r = list(self.ratios)
        if len(r) < 4:
            return min(r), max(r)
        q = statistics.quantiles(r, n=4)
        return q[0], q[2]

    @property
    def faster(self) -> bool:
        """The variant is faster beyond the round-to-round spread: the lower
        quartile of the ratios is above 1 (the median gain is larger than the
        half of the spread below it)."""
        return self.quartiles[0] > 1.0

    @property
    def slower(self) -> bool:
        """The variant is slower beyond the spread: the upper quartile is below 1."""
        return self.quartiles[1] < 1.0

    def inverse(self) -> "Paired":
        return Paired(tuple(1.0 / x for x in self.ratios))

    def to_dict(self) -> dict:
        q1, q3 = self.quartiles
        return {"median": self.median, "q1": q1, "q3": q3, "rounds": len(self.ratios)}

    def text(self) -> str:
        q1, q3 = self.quartiles
        return f"{self.median:.3f}x [{q1:.3f}, {q3:.3f}]"


def paired(rounds: Rounds, base, variant) -> Paired:
    """The ratios of `base`'s round medians to `variant`'s."""
    return Paired(tuple(b / v for b, v in zip(rounds.medians[base], rounds.medians[variant])))
