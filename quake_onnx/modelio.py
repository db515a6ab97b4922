"""Reading ONNX files for the tool: clear errors on bad input, external data
checked and loaded, and the files a model references (writes.py never
writes over them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper as ext

# Protobuf cannot serialise a message of 2 GiB or more; leave room for the graph.
PROTOBUF_LIMIT = 2**31 - 2**24
# Tensors smaller than this stay inside the .onnx file when data goes external.
EXTERNAL_THRESHOLD = 1024


class ModelFileError(Exception):
    """A problem with a file the user named, worded for one line on stderr."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph in it (If / Loop / Scan bodies, at any depth)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from iter_graphs(attr.g)
            for sub in attr.graphs:
                yield from iter_graphs(sub)


def iter_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of the model, subgraphs and functions included."""

    def from_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            yield from from_nodes([node])

    def from_nodes(nodes) -> Iterator[onnx.TensorProto]:
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    yield from from_graph(attr.g)
                for g in attr.graphs:
                    yield from from_graph(g)

    yield from from_graph(model.graph)
    for function in model.functions:
        yield from from_nodes(function.node)


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(ext.uses_external_data(t) for t in iter_tensors(model))


def is_loaded(tensor: onnx.TensorProto) -> bool:
    return not ext.uses_external_data(tensor) or tensor.HasField("raw_data")


def shown(path: Path) -> str:
    """`path` as an error message names it: quoted when its name would not
    show as typed (blank, leading or trailing spaces, control characters)."""
    text = str(path)
    name = path.name
    if not name.strip() or name != name.strip() or any(not c.isprintable() for c in text):
        return repr(text)
    return text


def check_input_path(path: Path) -> None:
    """Raises ModelFileError unless `path` is a regular file (symlinks
    followed): reading a FIFO or a device as a model would wait forever."""
    if not path.exists():
        stdin = " (a model is read from a file, not from standard input)" if path.name == "-" else ""
        raise ModelFileError(f"{shown(path)} does not exist{stdin}")
    if path.is_dir():
        raise ModelFileError(f"{shown(path)} is a directory, not an ONNX model")
    if not path.is_file():
        raise ModelFileError(f"{shown(path)} is not a regular file (a device, FIFO or socket), not an ONNX model")


def load_graph(path: Path) -> onnx.ModelProto:
    """The model at `path` without its external data (cheap even for huge models)."""
    check_input_path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError:
        raise ModelFileError(f"{path} is not an ONNX model (truncated or not protobuf)") from None
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e.strerror or e}") from None
    # An empty or tiny file parses as an empty message; a real export always
    # carries an IR version, a graph and the opsets it uses.
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise ModelFileError(f"{path} is not an ONNX model (no IR version, graph or opset)")
    return model


def check_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Every external tensor's file exists, may be read and is long enough,
    without reading it: bad input is refused before ONNX Runtime spends time
    on it (and says of an unreadable file only "SystemError : 13")."""
    for tensor in iter_tensors(model):
        if not ext.uses_external_data(tensor):
            continue
        info = ext.ExternalDataInfo(tensor)
        _refuse_outside(info.location, path)
        file = path.parent / info.location
        if not file.is_file():
            raise ModelFileError(f"{path}: its external data file {info.location} is missing")
        if not os.access(file, os.R_OK):
            raise ModelFileError(f"{path}: cannot read its external data file {info.location}: permission denied")
        length = info.length if info.length else _expected_nbytes(tensor)
        if length is not None and file.stat().st_size < (info.offset or 0) + length:
            raise ModelFileError(
                f"{path}: external data file {info.location} is truncated "
                f"(tensor {tensor.name} needs bytes up to {(info.offset or 0) + length}, "
                f"the file has {file.stat().st_size})"
            )


def absolute(path: os.PathLike | str) -> Path:
    """`path` made absolute against the working folder as the OS reads it:
    symlinks kept, but a `..` undoes the folder the OS reached, not the name
    before it (with `sl` a link to `a/b`, `sl/../x` is `a/x`, which
    os.path.abspath would make `./x`). A `..` after a folder that does not
    exist stays, so the path fails as it would for the OS."""
    joined = os.path.join(os.getcwd(), os.fspath(path))
    parts = joined.split(os.sep)
    if ".." not in parts:
        return Path(os.path.abspath(joined))
    last = len(parts) - 1 - parts[::-1].index("..")
    head, rest = os.sep.join(parts[: last + 1]) or os.sep, [p for p in parts[last + 1 :] if p not in ("", ".")]
    base = os.path.realpath(head) if os.path.isdir(head) else head
    return Path(base, *rest)


def external_data_files(model: onnx.ModelProto, path: Path) -> list[Path]:
    """The files `model` (read from `path`) keeps tensor data in, as absolute
    paths, each once, in first-use order; whether they exist is not checked."""
    folder = absolute(path).parent
    files: dict[str, Path] = {}
    for tensor in iter_tensors(model):
        if ext.uses_external_data(tensor):
            location = ext.ExternalDataInfo(tensor).location
            if location:
                file = Path(os.path.normpath(folder / location))
                files.setdefault(str(file), file)
    return list(files.values())


def model_files(model: onnx.ModelProto, path: Path) -> list[Path]:
    """The model file and every external data file it references (absolute)."""
    return [absolute(path), *external_data_files(model, path)]


def load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Reads every external tensor of `model` (loaded from `path`) into memory,
    refusing missing or short data files instead of passing garbage on.

    As ONNX Runtime reads them: a location is a relative path that stays in
    the model's folder (an absolute one, or one that climbs out with `..`, is
    refused: ModelFileError), and the file there may be a symlink, which is
    followed (the Hugging Face hub cache links every file of a snapshot to a
    blob elsewhere; onnx's own loader refuses symlinks)."""
    if not has_external_data(model):
        return
    for tensor in iter_tensors(model):
        if not ext.uses_external_data(tensor):
            continue
        try:
            info = ext.ExternalDataInfo(tensor)
        except ValueError as e:  # an offset or length that is not a number
            raise ModelFileError(f"{path}: bad external data entry of tensor {tensor.name}: {e}") from None
        tensor.raw_data = _read_external(info, path)
        expected = _expected_nbytes(tensor)
        if expected is not None and len(tensor.raw_data) != expected:
            raise ModelFileError(
                f"{path}: external data file {info.location} is truncated "
                f"(tensor {tensor.name} needs {expected} bytes, found {len(tensor.raw_data)})"
            )
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def _refuse_outside(location: str, path: Path) -> None:
    """A location must name a file inside the model's folder, as ONNX Runtime
    requires: an absolute one or one leading up with `..` is refused
    (ModelFileError), whether or not such a file exists."""
    inside = os.path.normpath(location) if location else ""
    if not inside or os.path.isabs(inside) or inside == ".." or inside.startswith(".." + os.sep):
        raise ModelFileError(
            f"{path}: bad external data reference {location!r}: it must be a path inside the model's folder"
        )


def _read_external(info: ext.ExternalDataInfo, path: Path) -> bytes:
    """The bytes `info` points at, for the model at `path` (load_external_data)."""
    location = info.location
    _refuse_outside(location, path)
    offset = info.offset or 0
    if offset < 0 or (info.length is not None and info.length < 0):
        raise ModelFileError(f"{path}: bad external data reference {location!r}: negative offset or length")
    try:
        with open(path.parent / location, "rb") as f:
            f.seek(offset)
            return f.read(info.length) if info.length is not None else f.read()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: its external data file {location} is missing") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read external data {location}: {e.strerror or e}") from None


_T = onnx.TensorProto
# Fixed-width types only: strings and packed sub-byte types are not checked.
_ITEMSIZE = {
    _T.FLOAT: 4,
    _T.DOUBLE: 8,
    _T.FLOAT16: 2,
    _T.BFLOAT16: 2,
    _T.BOOL: 1,
    _T.INT8: 1,
    _T.UINT8: 1,
    _T.INT16: 2,
    _T.UINT16: 2,
    _T.INT32: 4,
    _T.UINT32: 4,
    _T.INT64: 8,
    _T.UINT64: 8,
    _T.COMPLEX64: 8,
    _T.COMPLEX128: 16,
}


def _expected_nbytes(tensor: onnx.TensorProto) -> Optional[int]:
    itemsize = _ITEMSIZE.get(tensor.data_type)
    if itemsize is None:
        return None
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def needs_external_data(model: onnx.ModelProto) -> bool:
    """True when the model cannot be one protobuf file."""
    size = sum(len(t.raw_data) for t in iter_tensors(model))
    if size > PROTOBUF_LIMIT:
        return True
    try:
        return model.ByteSize() > PROTOBUF_LIMIT
    except Exception:
        return True


# Tensors at least this big travel through the rewrite without their bytes.
STRIP_THRESHOLD = 16 * 2**20
_STRIPPED = "quake-onnx-stripped"


def strip_large_tensors(model: onnx.ModelProto, threshold: Optional[int] = None) -> dict[str, bytes]:
    """Moves the bytes of big tensors out of `model` (they become external
    references to a file that does not exist) and returns them by name.

    The rewrite copies the model, rebuilds it through onnx-graphsurgeon and
    runs shape inference: protobuf serialises for each, and fails outright on
    one tensor or model of 2 GB or more. Weights are never what the rewrite
    looks at; scalars and biases stay below the threshold."""
    threshold = STRIP_THRESHOLD if threshold is None else threshold
    stash: dict[str, bytes] = {}
    for tensor in iter_tensors(model):
        if tensor.HasField("raw_data") and len(tensor.raw_data) >= threshold and tensor.name not in stash:
            stash[tensor.name] = tensor.raw_data
    for tensor in iter_tensors(model):
        if tensor.name in stash and tensor.HasField("raw_data"):
            tensor.ClearField("raw_data")
            del tensor.external_data[:]
            entry = tensor.external_data.add()
            entry.key, entry.value = "location", _STRIPPED
            tensor.data_location = onnx.TensorProto.EXTERNAL
    return stash


def restore_large_tensors(model: onnx.ModelProto, stash: dict[str, bytes]) -> None:
    """Puts the bytes taken by strip_large_tensors back, by tensor name."""
    for tensor in iter_tensors(model):
        if ext.uses_external_data(tensor) and ext.ExternalDataInfo(tensor).location == _STRIPPED:
            tensor.raw_data = stash[tensor.name]
            tensor.ClearField("data_location")  # unset, as the weights of an export are
            del tensor.external_data[:]
