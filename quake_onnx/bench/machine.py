"""What the machine is and what it can do: CPU model, cache sizes, and the
rate of a plain memory copy (the roofline of elementwise ops).

Cache sizes come from Linux's /sys/devices/system/cpu/cpu0/cache (what the
kernel read from CPUID); sysconf's _SC_LEVEL*_CACHE_SIZE is not used because
glibc misreads some virtual CPUs (320 MB of L3 on a 32 MB EPYC VM).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")


@dataclass(frozen=True)
class Caches:
    """Per-core data cache sizes in bytes (L3: the whole shared cache); 0 when unknown."""

    l1d: int = 0
    l2: int = 0
    l3: int = 0

    def text(self) -> str:
        def size(b: int) -> str:
            return "?" if not b else (f"{b // 2**20} MB" if b >= 2**20 else f"{b // 2**10} KB")

        return f"L1D {size(self.l1d)}, L2 {size(self.l2)}, L3 {size(self.l3)}"


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    return int(text.rstrip("KMG") or 0) * scale


def caches() -> Caches:
    found = {}
    for index in sorted(_CACHE.glob("index*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = _parse_size((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified"):
            found[level] = size
    return Caches(found.get(1, 0), found.get(2, 0), found.get(3, 0))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    info = {}
    for line in lines:
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    name = info.get("model name") or platform.machine()
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']} model {info['model']})"
    return name


def describe() -> str:
    """One line: CPU model, cache sizes, logical cores."""
    return f"{cpu_model()}, {caches().text()}, {os.cpu_count()} logical cores"


# Each thread copies at least this many bytes per timed sample, so that
# starting the threads is not what gets timed.
_MIN_SAMPLE_BYTES = 8 * 2**20


def _as_floats(a: np.ndarray) -> np.ndarray:
    """a's bytes as float32, padded with zero bytes to a whole float (a copy then)."""
    raw = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    if raw.size % 4:
        raw = np.concatenate([raw, np.zeros(4 - raw.size % 4, np.uint8)])
    return raw.view(np.float32)


def copy_seconds(src: np.ndarray, dst: np.ndarray, threads: int, repeats: int, min_time: float) -> float:
    """Median seconds of `repeats` plain copies (memcpy) src -> dst by
    `threads` threads, each copying its contiguous share (the library's
    QuakeCopySeconds: C++ threads, no GIL). Small tensors are copied more
    times per sample and the time scaled back to `repeats`. Any dtype: the
    bytes are copied as floats (an odd number of float16 elements with one
    padding half)."""
    import ctypes

    from .._library import _lib

    fn = _lib().QuakeCopySeconds
    fn.restype = ctypes.c_double
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
    src, dst = _as_floats(src), _as_floats(dst)
    assert dst.flags.c_contiguous and dst.size == src.size
    share = max(1, src.nbytes // threads)
    copies = max(repeats, -(-_MIN_SAMPLE_BYTES // share))
    args = (src.ctypes.data, dst.ctypes.data, src.size, threads, copies)
    fn(*args)  # warm: pages touched, threads' stacks made
    times, start = [], time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_time and len(times) < 200):
        times.append(fn(*args))
    return statistics.median(times) * repeats / copies
