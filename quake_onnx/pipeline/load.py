"""Stage 1: read the input (its graph; external data checked, read later) and
decide every file the call will write before any work is done."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import onnx

from .. import modelio, sessions, writes
from .job import Job, OptimizeError, Settings


def load(model_or_path, output, in_place: bool, settings: Settings, also_written: Sequence = ()) -> Job:
    """The Job for `model_or_path` (a path, or a ModelProto with its external
    data loaded). Raises OptimizeError / ModelFileError (exit 2) for a missing
    or corrupt input, a destination that is an input file or cannot be
    written, or an `also_written` path that collides with either."""
    src: Optional[Path] = None
    inputs = writes.InputFiles()
    if isinstance(model_or_path, onnx.ModelProto):
        model = model_or_path
        if not all(modelio.is_loaded(t) for t in modelio.iter_tensors(model)):
            raise OptimizeError("the model's external data is not loaded; pass its path instead")
    else:
        src = writes.absolute(model_or_path)
        model = modelio.load_graph(src)
        modelio.check_external_data(model, src)
        inputs.add_model(model, src)
    dest = _destination(src, output, in_place, inputs)
    if dest is not None and modelio.has_external_data(model):
        writes.refuse_data_beyond_link(dest)  # before any work (writes.save_model_atomic checks again)
    for what, path in also_written:
        if dest is not None and writes.belongs_to_pair(Path(path), dest):
            raise OptimizeError(f"{what} {path} would be written over the output model or its data file")
        writes.check_output_path(Path(path), what, inputs)
    return Job(
        settings=settings,
        model=model,
        src=src,
        dest=dest,
        in_place=in_place,
        inputs=inputs,
        libraries=sessions.libraries_for(model, settings.user_libraries),
        had_external=modelio.has_external_data(model),
    )


def _destination(src: Optional[Path], output, in_place: bool, inputs: writes.InputFiles) -> Optional[Path]:
    if output is None:
        if in_place and src is None:
            raise OptimizeError("in_place needs a model path, not a ModelProto")
        return src if in_place else None
    dest = writes.absolute(output)
    is_src = src is not None and (os.path.realpath(src) == os.path.realpath(dest) or _same_inode(src, dest))
    if is_src and not in_place:
        raise OptimizeError(f"output {output} is the input; pass --in-place to overwrite it")
    # In place, OUT may be the input model, never one of its data files.
    writes.check_output_path(dest, inputs=None if is_src else inputs, with_data=True)
    return dest


def _same_inode(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
