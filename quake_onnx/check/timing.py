"""Latency of the original and the optimized session on the same feeds."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

from .paired import settle


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
    """Medians over `runs` runs of each session, after `warmup` runs of each
    (at least one).

    The two sessions alternate run by run, each first every other run, so a
    frequency change, a noisy neighbour or a cold start affects both alike.
    With more than one thread, each run is preceded by a wait until the
    session run before it has stopped spinning its pool threads
    (paired.settle, about 40 ms after a Run with ORT 1.32): otherwise every
    run shares the cores with the other session's spinning pool (an
    attention block at 2 threads read 1.01x, 1.76x and 1.97x in three calls
    without the wait, 4.5 against 4.6 ms alone). Each timed run then starts with both pools asleep and pays their
    wake-up, as a request after a pause does: about 0.3 ms here (the encoder
    sample at 2 threads, 0.6 against 0.2 ms back to back), which only
    sub-millisecond models notice. Those stay noisy at 2 threads on this VM
    either way: the sample read 0.91-1.04x from call to call like this, and
    0.70-0.90x with an untimed run before each timed one (pools awake)."""
    # At least one each, whatever `warmup`: a first timed run is cold, and at
    # --runs 1-2 it alone made a model against itself read 2-3x.
    for _ in range(max(warmup, 1)):
        original.run(None, feeds)
        optimized.run(None, feeds)
    t_orig, t_opt = [], []
    clock = time.perf_counter
    for i in range(runs):
        pair = ((original, t_orig), (optimized, t_opt))
        for session, times in pair if i % 2 == 0 else pair[::-1]:  # each first every other run
            if threads > 1:
                settle()
            t0 = clock()
            session.run(None, feeds)
            times.append(clock() - t0)
    a, b = statistics.median(t_orig) * 1e3, statistics.median(t_opt) * 1e3
    return Timing(threads, warmup, runs, a, b, a / b if b > 0 else float("inf"))
