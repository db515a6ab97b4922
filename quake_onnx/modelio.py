"""Reading and writing ONNX files for the optimizer: clear errors on bad input,
external data in and out, and writes that replace the destination atomically."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional

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


def check_input_path(path: Path) -> None:
    if not path.exists():
        raise ModelFileError(f"{path} does not exist")
    if path.is_dir():
        raise ModelFileError(f"{path} is a directory, not an ONNX model")


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
    """Every external tensor's file exists and is long enough, without reading
    it: bad input is refused before ONNX Runtime spends time on it."""
    for tensor in iter_tensors(model):
        if not ext.uses_external_data(tensor):
            continue
        info = ext.ExternalDataInfo(tensor)
        file = path.parent / info.location
        if not file.is_file():
            raise ModelFileError(f"{path}: its external data file {info.location} is missing")
        length = info.length if info.length else _expected_nbytes(tensor)
        if length is not None and file.stat().st_size < (info.offset or 0) + length:
            raise ModelFileError(
                f"{path}: external data file {info.location} is truncated "
                f"(tensor {tensor.name} needs bytes up to {(info.offset or 0) + length}, "
                f"the file has {file.stat().st_size})"
            )


def load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Reads every external tensor of `model` (loaded from `path`) into memory,
    refusing missing or short data files instead of passing garbage on."""
    if not has_external_data(model):
        return
    base = str(path.parent)
    for tensor in iter_tensors(model):
        if not ext.uses_external_data(tensor):
            continue
        info = ext.ExternalDataInfo(tensor)
        try:
            ext.load_external_data_for_tensor(tensor, base)
        except FileNotFoundError:
            raise ModelFileError(f"{path}: its external data file {info.location} is missing") from None
        except OSError as e:
            raise ModelFileError(f"{path}: cannot read external data {info.location}: {e.strerror or e}") from None
        except Exception as e:  # onnx refuses locations outside the model's folder
            raise ModelFileError(f"{path}: bad external data reference {info.location!r}: {e}") from None
        expected = _expected_nbytes(tensor)
        if expected is not None and len(tensor.raw_data) != expected:
            raise ModelFileError(
                f"{path}: external data file {info.location} is truncated "
                f"(tensor {tensor.name} needs {expected} bytes, found {len(tensor.raw_data)})"
            )
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


_T = onnx.TensorProto
# Fixed-width types only: strings and packed sub-byte types are not checked.
_ITEMSIZE = {
    _T.FLOAT: 4, _T.DOUBLE: 8, _T.FLOAT16: 2, _T.BFLOAT16: 2, _T.BOOL: 1,
    _T.INT8: 1, _T.UINT8: 1, _T.INT16: 2, _T.UINT16: 2, _T.INT32: 4, _T.UINT32: 4,
    _T.INT64: 8, _T.UINT64: 8, _T.COMPLEX64: 8, _T.COMPLEX128: 16,
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


def check_output_path(path: Path, what: str = "output") -> None:
    """Refuses a destination that cannot be written, before any work is done."""
    if path.is_dir():
        raise ModelFileError(f"{what} {path} is a directory")
    parent = path.parent
    if not parent.exists():
        raise ModelFileError(f"cannot write {what} {path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise ModelFileError(f"cannot write {what} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ModelFileError(f"cannot write {what} {path}: permission denied")
    # os.access says yes to root and knows nothing of read-only mounts: probe.
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".probe")
    except OSError as e:
        raise ModelFileError(f"cannot write {what} {path}: {e.strerror or e}") from None
    os.close(fd)
    _unlink(Path(probe))


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _file_mode(dest: Path) -> int:
    if dest.exists():
        return dest.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_bytes_atomic(data: bytes, dest: Path, verify: Optional[Callable[[Path], None]] = None) -> None:
    """Writes `data` to `dest` through a temporary file in the same folder:
    readers see the old file or the new one, never a partial one. `verify`
    runs on the finished temporary file; if it raises, `dest` is unchanged."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(Path(tmp))
        os.chmod(tmp, _file_mode(dest))
        os.replace(tmp, dest)
    except BaseException:
        _unlink(Path(tmp))
        raise


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def save_model_atomic(
    model: onnx.ModelProto,
    dest: Path,
    *,
    external: bool,
    verify: Optional[Callable[[Path], None]] = None,
) -> None:
    """Saves `model` at `dest`; with `external`, tensor data goes to
    `<dest name>.data` next to it. `verify(path)` runs on the finished
    temporary copy; if anything raises, `dest` (and its data file) is unchanged.

    With external data the model is left pointing at `dest`'s data file and
    its tensors are read back, so the caller keeps a complete model."""
    if not external:
        write_bytes_atomic(model.SerializeToString(), dest, verify)
        return

    data_name = f"{dest.name}.data"
    data_dest = dest.parent / data_name
    # A fresh folder: onnx appends to an existing data file instead of replacing it.
    work = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    mode = _file_mode(dest)
    try:
        onnx.save_model(
            model,
            str(work / dest.name),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=EXTERNAL_THRESHOLD,
        )
        if verify is not None:
            verify(work / dest.name)
        new_data = work / data_name
        backup = work / "previous.data"
        if new_data.exists():
            for f in (work / dest.name, new_data):
                os.chmod(f, mode)
            if data_dest.exists():
                os.replace(data_dest, backup)
            try:
                os.replace(new_data, data_dest)
                os.replace(work / dest.name, dest)
            except BaseException:
                # Put the old pair back so `dest` still matches its data file.
                if backup.exists():
                    os.replace(backup, data_dest)
                else:
                    _unlink(data_dest)
                raise
        else:  # every tensor was below the threshold
            os.chmod(work / dest.name, mode)
            os.replace(work / dest.name, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ext.load_external_data_for_model(model, str(dest.parent))


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
