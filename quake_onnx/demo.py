"""The sample run behind `quake-onnx demo`: one model optimized, both run in one process."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.table import Table

import quake_onnx

from . import modelio, sessions
from ._cli_output import make_console
from .check.paired import settle
from .modelio import ModelFileError


def _session(
    model: bytes | str, threads: int, with_library: bool, user_file: Path | None = None
) -> ort.InferenceSession:
    """A session of `model`; when it is the user's `user_file`, a model ONNX
    Runtime refuses is bad input (ModelFileError), not a failure of the demo."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if with_library:
        so.register_custom_ops_library(quake_onnx.get_library_path())
    try:
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        if user_file is None:
            raise
        raise ModelFileError(f"ONNX Runtime cannot load --optimized {user_file}: {sessions.one_line(e)}") from None


def _median_ms(session: ort.InferenceSession, feeds: dict, runs: int) -> float:
    settle()  # the session timed before may still have its pool threads spinning
    for _ in range(5):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _installed_sample() -> Path:
    # pip install puts the model in quake_onnx/samples; an editable install or
    # a source checkout without one still has sample_models/ beside the package.
    candidates = [Path(folder) / "samples" for folder in quake_onnx.__path__]
    candidates.append(Path(__file__).resolve().parent.parent / "sample_models")
    for folder in candidates:
        if (folder / "encoder_block.onnx").is_file():
            return folder
    return candidates[0]


def run_demo(folder: Path | None = None, threads: int = 1, runs: int = 50, optimized: Path | None = None) -> int:
    if folder is not None and not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"--models {modelio.shown(folder)} {what} (give the folder holding encoder_block.onnx)")
    original = (folder if folder is not None else _installed_sample()) / "encoder_block.onnx"
    if not original.is_file():
        raise FileNotFoundError(f"{original} not found (build it with `python sample_models/build.py`)")
    if optimized is not None:
        # The user's file, checked as every command checks a model: a missing,
        # corrupt or non-ONNX file, or missing external data, is bad input.
        try:
            modelio.check_external_data(modelio.load_graph(optimized), optimized)
        except ModelFileError as e:
            raise ModelFileError(f"--optimized: {e}") from None
        quake_model: bytes | str = str(optimized)  # a path: ORT finds external data beside it
        summary = f"optimized model {optimized}"
    else:
        model, report = quake_onnx.optimize(str(original))
        quake_model = model.SerializeToString()
        summary = "optimized now: " + ", ".join(f"{rule} x{n}" for rule, n in sorted(report.counts().items()))
    rng = np.random.default_rng(1)
    mask = np.zeros((1, 1, 64, 64), np.float32)
    mask[..., 48:] = -np.inf  # padded key positions, as exporters mask them
    feeds = {"X": rng.standard_normal((1, 64, 128)).astype(np.float32), "MASK": mask}

    base = _session(original.read_bytes(), threads, with_library=False)
    fast = _session(quake_model, threads, with_library=True, user_file=optimized)
    y0 = base.run(None, feeds)[0]
    try:
        y1 = fast.run(None, feeds)[0]
    except Exception as e:
        if optimized is None:
            raise
        raise ModelFileError(
            f"--optimized {optimized} does not run on the encoder block's inputs: {sessions.one_line(e)}"
        ) from None
    if y1.shape != y0.shape:
        raise ModelFileError(
            f"--optimized {optimized}: its first output has shape {list(y1.shape)}, the encoder block's "
            f"{list(y0.shape)}"
        )
    max_abs = float(np.abs(y0 - y1).max())
    cosine = float(np.dot(y0.ravel(), y1.ravel()) / (np.linalg.norm(y0) * np.linalg.norm(y1)))
    t0, t1 = _median_ms(base, feeds, runs), _median_ms(fast, feeds, runs)

    table = Table(title=f"encoder block, {threads} thread(s), kernels: {quake_onnx.selected_isa()}")
    for column in ("model", "median ms", "max abs error", "cosine"):
        table.add_column(column)
    table.add_row("ONNX Runtime ops", f"{t0:.3f}", "-", "-")
    table.add_row("com.quake (order 2)", f"{t1:.3f}", f"{max_abs:.2e}", f"{cosine:.6f}")
    console = make_console()
    console.print(summary)
    console.print(table)
    console.print(f"speedup {t0 / t1:.2f}x; library {quake_onnx.get_library_path()}", soft_wrap=True)
    ok = bool(np.isfinite(y1).all()) and cosine > 0.9999
    console.print("PASS" if ok else "FAIL: outputs differ more than expected")
    return 0 if ok else 1
