"""Latency of the original and the optimized session on the same feeds."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass


@dataclass
class Timing:
    threads: int
    warmup: int
    runs: int
    original_ms: float  # median
    optimized_ms: float  # median
    speedup: float  # original_ms / optimized_ms

    def to_dict(self) -> dict:
        return asdict(self)


def measure(original, optimized, feeds: dict, *, threads: int, warmup: int = 3, runs: int = 20) -> Timing:
    """Medians over `runs` runs of each session, after `warmup` runs of each.

    The two sessions alternate run by run, so a frequency change or a noisy
    neighbour affects both alike instead of whichever happened to run second."""
    for _ in range(warmup):
        original.run(None, feeds)
        optimized.run(None, feeds)
    t_orig, t_opt = [], []
    clock = time.perf_counter
    for _ in range(runs):
        t0 = clock()
        original.run(None, feeds)
        t1 = clock()
        optimized.run(None, feeds)
        t2 = clock()
        t_orig.append(t1 - t0)
        t_opt.append(t2 - t1)
    a, b = statistics.median(t_orig) * 1e3, statistics.median(t_opt) * 1e3
    return Timing(threads, warmup, runs, a, b, a / b if b > 0 else float("inf"))
