"""The real measurements of `quake-onnx tune`: each variant built (prepare.py),
opened in ONNX Runtime the way `check` opens models (ORT_ENABLE_ALL, CPU
provider, --threads), compared with the original on every input set, and
timed against another with the paired method (check/paired.py)."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional

import onnx
import onnxruntime as ort

from .. import modelio, sessions
from ..calibrate import calibrate
from ..check import compare as cmp
from ..check.paired import Paired, paired, time_rounds
from .prepare import Prepared, build
from .space import ORIGINAL, Variant

INSTANCES = 2  # sessions per variant, taking turns by round (check/paired.py)
# A block another process disturbed is run once more after a short pause: on a machine that is
# busy all along, waiting longer would only spend the budget.
RETRIES, PAUSE = 1, 0.05


class VariantFailed(Exception):
    """A variant that ONNX Runtime refuses to load or run."""


class ModelBench:
    """Bench (search.py) on real models. `rounds` paired rounds per
    comparison; a block of runs lasts at least `min_time` seconds and
    `min_runs` runs."""

    def __init__(
        self,
        prep: Prepared,
        original_source,
        feeds: list,
        threads: int,
        *,
        rounds: int = 8,
        min_time: float = 0.05,
        min_runs: int = 2,
        keep: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.prep = prep
        self.feeds = feeds
        self.threads = threads
        self.rounds = rounds
        self.min_time = min_time
        self.min_runs = min_runs
        self.keep = keep
        self.clock = clock
        self._tmp = tempfile.TemporaryDirectory(prefix="quake-tune-")
        self._sessions: OrderedDict = OrderedDict()  # Variant -> [session]; the least recently used first
        self._models: OrderedDict = OrderedDict()  # Variant -> its Job (model and report)
        self._original_source = original_source
        self._libraries = sessions.libraries_for(prep.job.model, prep.job.settings.user_libraries, quake=False)
        self._quake_libraries = sessions.libraries_for(prep.job.model, prep.job.settings.user_libraries)
        t0 = clock()
        first = self._open(original_source, self._libraries)
        self.session_seconds = clock() - t0
        self._sessions[ORIGINAL] = [first]
        self.names = [o.name for o in first.get_outputs()]
        self.reference = [first.run(self.names, f) for f in feeds]
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            first.run(None, feeds[0])
            times.append(time.perf_counter() - t0)
        self.latency = statistics.median(times)
        self.build_seconds: list = []  # what building each variant took (the rewrite)
        self.open_seconds: list = []  # what opening a session of a variant took
        self._blocks = self._discarded = 0  # timed blocks, and those run again (other processes were busy)

    def close(self) -> None:
        self._sessions.clear()
        self._models.clear()
        self._tmp.cleanup()

    # -------------------------------------------------------------- models and sessions

    def _open(self, source, libraries) -> ort.InferenceSession:
        so = sessions.options(libraries, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL, threads=self.threads)
        return sessions.open_session(source, so)

    def model(self, variant: Variant):
        """The variant's Job (built now unless it is among the last few built)."""
        if variant in self._models:
            self._models.move_to_end(variant)
            return self._models[variant]
        t0 = self.clock()
        job = build_calibrated(self.prep, variant, self.feeds)
        self.build_seconds.append(self.clock() - t0)
        self._models[variant] = job
        while len(self._models) > self.keep:
            self._models.popitem(last=False)
        return job

    def _source(self, model: onnx.ModelProto):
        if not modelio.needs_external_data(model):
            return model.SerializeToString()
        folder = Path(tempfile.mkdtemp(dir=self._tmp.name))
        path = folder / "variant.onnx"
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        onnx.save_model(copy, str(path), save_as_external_data=True, location="variant.onnx.data")
        return path

    def instances(self, variant: Variant, count: int) -> list:
        have = self._sessions.get(variant, [])
        if len(have) < count:
            source = self._original_source if variant.is_original else self._source(self.model(variant).model)
            libraries = self._libraries if variant.is_original else self._quake_libraries
            while len(have) < count:
                try:
                    t0 = self.clock()
                    have.append(self._open(source, libraries))
                    if not variant.is_original:
                        self.open_seconds.append(self.clock() - t0)
                except sessions.LibraryError:
                    raise
                except Exception as e:
                    raise VariantFailed(f"ONNX Runtime cannot load it: {sessions.one_line(e)}") from e
            self._sessions[variant] = have
        self._sessions.move_to_end(variant)
        while len(self._sessions) > self.keep + 1:  # the original never goes
            old = next(v for v in self._sessions if not v.is_original)
            del self._sessions[old]
        return have[:count]

    # -------------------------------------------------------------- Bench

    def errors(self, variant: Variant) -> list:
        try:
            session = self.instances(variant, 1)[0]
        except VariantFailed as e:
            return failed(str(e))
        per_output: dict = {n: [] for n in self.names}
        for feeds, ref in zip(self.feeds, self.reference):
            try:
                out = session.run(self.names, feeds)
            except Exception as e:
                return failed(f"it fails to run: {sessions.one_line(e)}")
            excuse_nan = not cmp.has_nan(feeds)
            for n, r, o in zip(self.names, ref, out):
                per_output[n].append(cmp.compare(n, r, o, excuse_nan=excuse_nan))
        return [cmp.merge(per_output[n]).to_dict() for n in self.names]

    def paired(self, base: Variant, variant: Variant) -> Paired:
        a = self.instances(base, INSTANCES)
        b = self.instances(variant, INSTANCES)
        measured = time_rounds(
            {"base": a, "variant": b},
            self.feeds[0],
            self.rounds,
            self.min_time,
            self.min_runs,
            retries=RETRIES,
            pause=lambda attempt: PAUSE,
            warmup=1,
        )
        self._blocks += 2 * self.rounds
        self._discarded += measured.discarded
        return paired(measured, "base", "variant")

    # -------------------------------------------------------------- costs

    def _build_cost(self) -> float:
        return statistics.median(self.build_seconds) if self.build_seconds else self.session_seconds

    def _missing_cost(self, variant: Optional[Variant], count: int) -> float:
        have = 0 if variant is None else len(self._sessions.get(variant, []))
        if have >= count:
            return 0.0
        built = variant is not None and (variant.is_original or variant in self._models or have > 0)
        opening = self.session_seconds
        if variant is None or not variant.is_original:
            opening = statistics.median(self.open_seconds) if self.open_seconds else 2 * self.session_seconds
        return (0.0 if built else self._build_cost()) + (count - have) * opening

    def _block(self) -> float:
        return max(self.min_time, self.min_runs * self.latency)

    def cost_errors(self, variant: Optional[Variant]) -> float:
        return self._missing_cost(variant, 1) + len(self.feeds) * self.latency

    def cost_paired(self, base: Variant, variant: Optional[Variant]) -> float:
        setup = self._missing_cost(base, INSTANCES) + self._missing_cost(variant, INSTANCES)
        warmup = 2 * INSTANCES * self.latency
        again = self._discarded / self._blocks if self._blocks else 0.0
        block = self._block() * (1 + again) + again * PAUSE + 0.02
        return setup + warmup + self.rounds * 2 * block


def build_calibrated(prep: Prepared, variant: Variant, feeds: list):
    """prepare.build, with the clip of its exaq Softmax nodes fixed from `feeds` (calibrate)."""
    job = build(prep, variant)
    if any(c.method == "exaq" for _, c in variant.picks):
        job.model, _ = calibrate(job.model, feeds, custom_ops_libraries=prep.job.settings.user_libraries)
    return job


def failed(message: str) -> list:
    """The outputs of a variant that did not run: space.within() says no, with `message`."""
    return [{"failed": message}]
