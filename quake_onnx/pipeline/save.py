"""Stage 7: write the result (writes.py: atomically, never over an input
file, model and data together), checked by opening it in ONNX Runtime with
the libraries it needs, as users will."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .. import modelio, sessions, writes
from ..modelio import ModelFileError
from .job import Job, OptimizeError
from .oracle import refuse_bad_input


def save(job: Job) -> Job:
    """Writes job.model at job.dest (nothing when dest is None). Raises
    OptimizeError: exit 1 when the result does not load or cannot be
    written, exit 2 when ONNX Runtime refuses the input itself."""
    job.report.warnings.extend(job.warnings)
    if job.dest is None:
        return job
    external = job.had_external or modelio.needs_external_data(job.model)
    # In place, the input is what gets replaced, its data files with it.
    keep = None if job.in_place and job.src is not None and job.dest == job.src else job.inputs
    try:
        writes.save_model_atomic(
            job.model, job.dest, external=external, verify=lambda path: verify_written(path, job.libraries), keep=keep
        )
    except OptimizeError as e:
        if e.exit_code == 1 and not job.settings.ort_fusions and job.src is not None:
            refuse_bad_input(modelio.load_graph(job.src), job.src, job.libraries)  # the oracle did not try it
        raise
    except ModelFileError:
        raise
    except OSError as e:
        raise OptimizeError(f"cannot write {job.dest}: {e.strerror or e}", exit_code=1) from None
    return job


def verify_written(path: Path, libraries: Sequence[str]) -> None:
    """The written model must open in ONNX Runtime with the libraries, as users will open it.
    Raises OptimizeError (exit 1; exit 2, as lib-path, naming the missing
    com.quake library when this installation has none: a source checkout
    whose library was never built)."""
    try:
        sessions.open_session(path, sessions.options(libraries))
    except sessions.LibraryError:
        raise
    except Exception as e:
        missing = sessions.missing_quake_library()
        if missing:
            raise OptimizeError(f"the rewritten model needs the com.quake library: {missing}", exit_code=2) from e
        raise OptimizeError(
            f"the rewritten model does not load in ONNX Runtime: {sessions.one_line(e)}", exit_code=1
        ) from e
