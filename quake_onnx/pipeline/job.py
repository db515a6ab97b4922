"""What flows between the stages of the optimizer: the settings, fixed once,
and the Job, which each stage takes and hands on."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import onnx

from ..modelio import ModelFileError
from ..rewrite.report import Report
from ..writes import InputFiles


class OptimizeError(ModelFileError):
    """A failure the CLI reports as one line; exit_code 2 for bad input or
    options, 1 for a failure while optimising or writing."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """The options of one optimize call, already checked (optimize.py)."""

    order: int = 2
    ops: frozenset = frozenset()
    skip: frozenset = frozenset()
    ort_fusions: bool = True
    ort_level: str = "extended"
    floors: tuple = ()  # (family, min elements) pairs
    softmax_method: str = "quake"
    bits: int = 3
    attention_precision: str = "float32"  # precision of the com.quake Attention nodes fused
    fuse_symbolic: frozenset = frozenset()  # families fused at symbolic sizes (rewrite_model)
    user_libraries: tuple = ()  # absolute paths (sessions.user_libraries)
    # tune's variants: ((rule name, anchor node name), rewrite.context.Pick) pairs, only
    # those replaced; None (optimize) replaces every candidate at `order`.
    select: Optional[tuple] = None


@dataclasses.dataclass
class Job:
    """One model on its way through the stages.

    `model` is what the next stage works on: the input's graph after load (its
    external data not yet read), the graph to rewrite after ort_oracle, the
    rewritten model after rewrite_ops."""

    settings: Settings
    model: onnx.ModelProto
    src: Optional[Path]  # the input file (absolute), None for a ModelProto
    dest: Optional[Path]  # where save writes (absolute), None to write nothing
    in_place: bool
    inputs: InputFiles  # files nothing may write over
    libraries: list  # custom-op libraries every session registers
    had_external: bool  # the input kept tensors in external data
    report: Report = dataclasses.field(default_factory=Report)
    warnings: list = dataclasses.field(default_factory=list)
    kept: dict = dataclasses.field(default_factory=dict)  # node name -> the ORT attention op it is fused into
    type_hints: list = dataclasses.field(default_factory=list)  # ORT's types of tensors onnx cannot infer
    laid_out: bool = False  # the model holds ORT's NCHWc layout (ort_level "all")
    existing_softmax: frozenset = frozenset()  # outputs of com.quake Softmax nodes the input already had
