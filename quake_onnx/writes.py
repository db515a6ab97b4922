"""Writing the files a command produces, so that nothing the user has is lost.

The guarantees (docs/optimize.md, "Which files a command writes"):
- nothing written (an output model, its external data file, a report, a
  temporary) is ever the input model or a file it references: `InputFiles`
  holds those, compared by resolved path and by inode, and
  `check_output_path` refuses a destination among them before any work;
- every write goes through a temporary in the destination's folder and
  `os.replace`: a reader sees the old file or the new one, never a partial one;
- a model with external data is written as a pair: the data file first,
  under a name no existing file has (never over another model's data), then
  the model that points at it; the data files the replaced model used are
  removed only once the new pair is in place. The data file is named
  `<OUT name>.data`; while a file of that name is still in use (by the model
  being replaced, or by any other file), the pair is first written under
  `<OUT name>.1.data` (.2, ...) and renamed once the old file is gone;
- only regular files are ever replaced: a destination that exists as a
  device, FIFO or socket is refused (os.replace would swap the node for a
  file, as root even /dev/null);
- temporaries take short names of their own (`.quake-*.tmp`), so any
  destination name the filesystem allows can be written;
- every path is made absolute first: the result is the same from any
  working folder;
- from the replace on, Ctrl-C and SIGTERM wait (`_signals_deferred`): the
  cleanup after it finishes, and an interrupt can never undo half a commit
  (the data file of a model already in place).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Callable, Optional

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper as ext

from . import modelio
from .modelio import ModelFileError

# Tensors smaller than this stay inside the .onnx file when data goes external.
EXTERNAL_THRESHOLD = 1024

# Temporaries get names of their own, not `.<dest name>.*`: a destination
# name near the filesystem's limit (255 bytes) must still be writable.
_TEMP_PREFIX = ".quake-"
# What a model's data file adds to its name, at most (`_claim` numbers it).
_DATA_NAME_ROOM = ".999.data"


absolute = modelio.absolute  # `path` made absolute as the OS reads it, symlinks kept


_STANDARD_STREAMS = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


def open_descriptor(path: os.PathLike | str) -> Optional[int]:
    """The file descriptor of this process that `path` names, or None:
    /dev/stdout and its kin, /dev/fd/N, /proc/self/fd/N, and symlinks to
    them. Such a path is a stream the shell opened (`> log.txt`); replacing
    what it resolves to would swap the shell's file, or the /dev/stdout link
    itself, for a new one."""
    own = re.compile(rf"/(?:dev|proc/self|proc/{os.getpid()})/fd/(\d+)")
    p = os.path.abspath(os.fspath(path))
    for _ in range(40):  # the kernel's own limit on a chain of links
        found = own.fullmatch(p)
        if found:
            return int(found.group(1))
        if p in _STANDARD_STREAMS and not os.path.islink(p):
            return _STANDARD_STREAMS[p]
        if not os.path.islink(p):
            return None
        try:
            p = os.path.normpath(os.path.join(os.path.dirname(p), os.readlink(p)))
        except OSError:
            return None
    return None


def written_file(path: os.PathLike | str) -> Path:
    """The file a write to `path` replaces: `path` itself, or, for a symlink,
    the file it points at (a dangling link: the file it names), so the link
    stays a link. Raises ModelFileError for an open file descriptor other
    than a report's standard output (open_descriptor)."""
    fd = open_descriptor(path)
    if fd is not None:
        raise ModelFileError(
            f"{path} is this process's file descriptor {fd}; give a file path (a report takes '-' for stdout)"
        )
    p = absolute(path)
    return Path(os.path.realpath(p)) if os.path.islink(p) else p


def refuse_data_beyond_link(path: os.PathLike | str) -> None:
    """Raises ModelFileError (exit 2) when `path` is a symlink to a file in
    another folder: a model with external data written through it keeps its
    data file beside the target, while ONNX Runtime, loading the link, looks
    beside the link (and refuses a data file outside the target's folder), so
    the model named by `path` would not load (the Hugging Face hub cache's
    snapshot links to blobs, for one)."""
    p = absolute(path)
    if not os.path.islink(p):
        return
    target = Path(os.path.realpath(p))
    if os.path.realpath(p.parent) != str(target.parent):
        raise ModelFileError(
            f"output {modelio.shown(p)} is a link to {modelio.shown(target)} in another folder; a model with "
            "external data written through it would not load from the link (its data file would sit beside "
            "the target): give a path that is not a link"
        )


class InputFiles:
    """The files a command reads (models, their external data, input sets):
    nothing it writes may be one of them."""

    def __init__(self) -> None:
        self._by_path: dict[str, str] = {}
        self._by_inode: dict[tuple[int, int], str] = {}

    def add(self, path: os.PathLike | str, role: str) -> None:
        """Protects `path`; `role` says what it is ("the input model")."""
        real = os.path.realpath(os.fspath(path))
        self._by_path.setdefault(real, role)
        try:
            st = os.stat(real)
        except OSError:
            return
        self._by_inode.setdefault((st.st_dev, st.st_ino), role)

    def add_model(self, model: onnx.ModelProto, path: os.PathLike | str, whose: str = "the input") -> None:
        """Protects a model file, every external data file it references, and
        the files of the ONNX model zoo's test data sets beside it
        (`test_data_set_*/*.pb`, which check, zoo, tune and calibrate read)."""
        files = modelio.model_files(model, Path(path))
        self.add(files[0], f"{whose} model")
        for data in files[1:]:
            self.add(data, f"an external data file of {whose} model")
        for pb in sorted(Path(files[0]).parent.glob("test_data_set_*/*.pb")):
            self.add(pb, f"a test data set file of {whose} model")

    def role_of(self, path: os.PathLike | str) -> Optional[str]:
        """What `path` is among the protected files, or None."""
        real = os.path.realpath(os.fspath(path))
        if real in self._by_path:
            return self._by_path[real]
        try:
            st = os.stat(real)
        except OSError:
            return None
        return self._by_inode.get((st.st_dev, st.st_ino))

    def __contains__(self, path: object) -> bool:
        return isinstance(path, (str, os.PathLike)) and self.role_of(path) is not None


def check_output_path(
    path: Path, what: str = "output", inputs: Optional[InputFiles] = None, *, with_data: bool = False
) -> None:
    """Refuses, before any work, a destination that is one of `inputs` or
    that cannot be written; `with_data`: a model whose data file's name
    (`<name>.data`, `<name>.k.data`) must fit too. Raises ModelFileError
    (exit code 2)."""
    role = inputs.role_of(path) if inputs is not None else None
    if role is not None:
        raise ModelFileError(f"{what} {path} is {role}; writing it would destroy it (choose another path)")
    shown, path = modelio.shown(path), written_file(path)
    if path.is_dir():
        raise ModelFileError(f"{what} {shown} is a directory")
    _refuse_special(path, what)
    parent = absolute(path).parent
    if not parent.exists():
        raise ModelFileError(f"cannot write {what} {shown}: folder {parent} does not exist")
    if not parent.is_dir():
        raise ModelFileError(f"cannot write {what} {shown}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ModelFileError(f"cannot write {what} {shown}: permission denied")
    limit = _name_max(parent) - (len(_DATA_NAME_ROOM) if with_data else 0)
    if len(os.fsencode(path.name)) > limit:
        raise ModelFileError(
            f"cannot write {what} {shown}: file name too long (over {limit} bytes"
            + (f", leaving room for its data file's {_DATA_NAME_ROOM!r})" if with_data else ")")
        )
    # os.access says yes to root and knows nothing of read-only mounts: probe.
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=_TEMP_PREFIX, suffix=".probe")
    except OSError as e:
        raise ModelFileError(f"cannot write {what} {shown}: {e.strerror or e}") from None
    os.close(fd)
    _unlink(Path(probe))


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _refuse_special(path: Path, what: str) -> None:
    """Raises ModelFileError when `path` exists and is not a regular file
    (symlinks followed): a device, FIFO, socket or folder must never be replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # absent (or a dangling symlink): a new file is made
    if not stat.S_ISREG(mode):
        kinds = ((stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISFIFO, "a FIFO"))
        kinds += ((stat.S_ISDIR, "a folder"), (stat.S_ISSOCK, "a socket"))
        kind = next((name for is_kind, name in kinds if is_kind(mode)), "a special file")
        raise ModelFileError(f"{what} {path} is {kind}, not a regular file; choose a file path")


def _file_mode(dest: Path) -> int:
    if dest.exists():
        return dest.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


@contextlib.contextmanager
def _signals_deferred():
    """SIGINT and SIGTERM received inside are taken when it ends (their
    handlers then raise KeyboardInterrupt / Terminated as usual): what runs
    inside finishes whole. Only the main thread handles signals; elsewhere
    this does nothing, as for a signal whose handler was set outside Python
    (getsignal None: it could not be put back)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list = []
    held = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not None]
    try:
        # ExitStack puts every handler back even when one raises as soon as it is back.
        with contextlib.ExitStack() as restore:
            for s in held:
                restore.callback(signal.signal, s, signal.signal(s, lambda signum, frame: received.append(signum)))
            yield
    finally:
        for s in dict.fromkeys(received):
            signal.raise_signal(s)


def write_bytes_atomic(
    data: bytes,
    dest: Path,
    verify: Optional[Callable[[Path], None]] = None,
    after_replace: Optional[Callable[[], None]] = None,
) -> None:
    """Writes `data` to `dest` through a temporary file in the same folder:
    readers see the old file or the new one, never a partial one. `verify`
    runs on the finished temporary file; if it raises, `dest` is unchanged.
    `after_replace` runs right after the replace, both with Ctrl-C and
    SIGTERM deferred (an interrupt lands before the commit or after all of
    it)."""
    dest = written_file(dest)
    _refuse_special(dest, "destination")
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=_TEMP_PREFIX, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(Path(tmp))
        os.chmod(tmp, _file_mode(dest))
        with _signals_deferred():
            os.replace(tmp, dest)
            tmp = None
            if after_replace is not None:
                after_replace()
    except BaseException:
        if tmp is not None:
            _unlink(Path(tmp))
        raise


def is_stdout(path: Optional[os.PathLike | str]) -> bool:
    """True for a report path of '-', or one naming this process's standard
    output (/dev/stdout, /dev/fd/1): the report goes to standard output."""
    return path is not None and (str(path) == "-" or open_descriptor(path) == 1)


def write_report(text: str, path: os.PathLike | str) -> None:
    """A report: to standard output for '-' (is_stdout), else through
    write_bytes_atomic. Raises OSError (and ModelFileError for a device)."""
    if is_stdout(path):
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_bytes_atomic(text.encode(), Path(path))


def data_file_name(dest: Path, k: int = 0) -> str:
    """The k-th name the external data of a model written at `dest` may take."""
    return f"{dest.name}.data" if k == 0 else f"{dest.name}.{k}.data"


def _referenced_data(dest: Path) -> list[Path]:
    """The external data files of the model now at `dest` (none if it is not one)."""
    if not dest.is_file():
        return []
    try:
        model = onnx.load(str(dest), load_external_data=False)
    except (DecodeError, OSError, ValueError):
        return []
    return modelio.external_data_files(model, dest)


def _point_at(model: onnx.ModelProto, old: str, new: str) -> None:
    for tensor in modelio.iter_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new


def _claim(source: Path, folder: Path, dest: Path) -> Path:
    """Gives `source` the first free data-file name of `dest` in `folder`,
    without ever replacing an existing file: os.link fails if the name exists."""
    k = 0
    while True:
        target = folder / data_file_name(dest, k)
        if not os.path.lexists(target):
            try:
                os.link(source, target)
                return target
            except FileExistsError:
                pass  # taken since we looked: try the next name
            except OSError as e:  # a filesystem without hard links
                if e.errno == errno.ENAMETOOLONG:
                    raise ModelFileError(
                        f"cannot write the external data file {target.name} of {dest}: the name is too long "
                        "(choose a shorter output name)"
                    ) from None
                if not os.path.lexists(target):
                    os.rename(source, target)
                    return target
        k += 1


def save_model_atomic(
    model: onnx.ModelProto,
    dest: Path,
    *,
    external: bool,
    verify: Optional[Callable[[Path], None]] = None,
    keep: Optional[InputFiles] = None,
) -> None:
    """Saves `model` at `dest`; with `external`, tensor data of 1 KiB or more
    goes to a data file next to it (`<dest name>.data`, see the module).
    `verify(path)` runs on the finished temporary model, which already points
    at its data file; if anything raises, `dest` and every existing file are
    as they were. The data files the replaced `dest` referenced are removed
    afterwards, except those in `keep` (the input's, when `dest` is not the
    input). With external data the model is left pointing at `dest`'s data
    file with its tensors read back, so the caller keeps a complete model."""
    if external:
        refuse_data_beyond_link(dest)
    dest = written_file(dest)
    old_data = _referenced_data(dest)
    if not external:
        write_bytes_atomic(
            model.SerializeToString(), dest, verify, lambda: _remove_replaced(old_data, None, dest, keep)
        )
        return

    def after_replace(data: Optional[Path]) -> None:  # the new pair is in place: the cleanup, uninterrupted
        _remove_replaced(old_data, data, dest, keep)
        if data is not None:
            _take_plain_name(model, dest, data)

    _write_pair(model, dest, verify, after_replace)
    ext.load_external_data_for_model(model, str(dest.parent))


def _write_pair(
    model: onnx.ModelProto,
    dest: Path,
    verify: Optional[Callable[[Path], None]],
    after_replace: Callable[[Optional[Path]], None],
) -> Optional[Path]:
    """Writes the data file under a free name, then the model over `dest`,
    then `after_replace(data file)` (see write_bytes_atomic). Returns the data
    file (None when every tensor stayed inside the model). The data file goes
    again if anything fails before the model replaced `dest`, never after."""
    folder = dest.parent
    # A fresh folder: onnx appends to an existing data file instead of replacing it.
    work = Path(tempfile.mkdtemp(dir=folder, prefix=_TEMP_PREFIX))
    data: Optional[Path] = None
    try:
        # onnx refuses a location that exists relative to the *working folder*:
        # a name nothing can have there keeps the result independent of it.
        staged = f".quake-{uuid.uuid4().hex}.data"
        onnx.save_model(
            model,
            str(work / "model.onnx"),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=staged,
            size_threshold=EXTERNAL_THRESHOLD,
        )
        committed = False

        def commit() -> None:
            nonlocal committed
            committed = True
            after_replace(data)

        try:
            if (work / staged).exists():
                os.chmod(work / staged, _file_mode(dest))
                # A signal between the link and `data =` would leave the link for good.
                with _signals_deferred():
                    data = _claim(work / staged, folder, dest)
                _point_at(model, staged, data.name)
            write_bytes_atomic(model.SerializeToString(), dest, verify, commit)
        except BaseException:
            if data is not None and not committed:
                _unlink(data)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return data


def _remove_replaced(old_data: list[Path], new_data: Optional[Path], dest: Path, keep: Optional[InputFiles]) -> None:
    """Deletes the data files of the model just replaced at `dest`: not the
    new pair's, not one in `keep`, nothing outside its folder (ONNX never
    reads there), and none that another model may still use."""
    folder = dest.parent
    root = os.path.realpath(folder)
    for file in old_data:
        real = os.path.realpath(file)
        if new_data is not None and real == os.path.realpath(new_data):
            continue
        if (keep is not None and file in keep) or os.path.commonpath([real, root]) != root:
            continue
        if _named_by_another_model(file, dest):
            continue
        _unlink(file)


def _folders_naming(data: Path, top: Path) -> list[Path]:
    """The folders whose models can name `data` (which lies inside `top`): a
    location never leaves its model's folder, so every folder from `data`'s
    up to the file system's root: `top`'s ancestors, `top`, and the folders
    between `top` and `data` (just those and data's folder when the path does
    not lead down from top)."""
    top = Path(os.path.normpath(absolute(top)))
    ancestors = list(reversed(top.parents))
    try:
        parts = Path(os.path.normpath(absolute(data.parent))).relative_to(top).parts
    except ValueError:
        return ancestors + [top, data.parent]
    return ancestors + [top] + [top.joinpath(*parts[: i + 1]) for i in range(len(parts))]


def _named_by_another_model(data: Path, dest: Path) -> bool:
    """True when a `.onnx` file other than `dest`, in a folder whose models
    can name `data` (_folders_naming), references `data`:
    a model copied without its data still points at it. A byte search for
    the name first (cheap on big models; most files do not hold it), then the
    external data of a file that does, read from its graph, compared by
    resolved path. An unreadable file may be one, so it keeps `data`."""
    needle, target = data.name.encode(), os.path.realpath(data)
    folders = _folders_naming(data, dest.parent)
    models = {m for folder in folders for m in folder.glob("*") if m.suffix.lower() == ".onnx"}
    for sibling in sorted(models):
        if sibling == dest or not sibling.is_file():
            continue
        try:
            with open(sibling, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if m.find(needle) < 0:
                    continue
            model = onnx.load(str(sibling), load_external_data=False)
        except ValueError:  # empty: mmap refuses 0 bytes
            continue
        except (OSError, DecodeError):
            return True
        if any(os.path.realpath(f) == target for f in modelio.external_data_files(model, sibling)):
            return True
    return False


def _take_plain_name(model: onnx.ModelProto, dest: Path, data: Path) -> None:
    """Moves a pair written under `<dest>.k.data` to `<dest>.data` once that
    name is free, the model always pointing at a complete file: link the
    plain name, point the model at it, then drop the numbered name."""
    plain = dest.parent / data_file_name(dest)
    if data == plain or os.path.lexists(plain):
        return
    try:
        os.link(data, plain)
    except OSError:
        return  # taken meanwhile, or no hard links: the numbered name stays, and is valid
    _point_at(model, data.name, plain.name)
    try:
        write_bytes_atomic(model.SerializeToString(), dest)
    except BaseException:
        _point_at(model, plain.name, data.name)
        _unlink(plain)
        raise
    _unlink(data)


def same_path(a: os.PathLike | str, b: os.PathLike | str) -> bool:
    """Whether `a` and `b` name one file, existing or not: resolved alike
    (links, `..`), so `L/r.json` and `L/x/../r.json` are one."""
    return os.path.realpath(absolute(a)) == os.path.realpath(absolute(b))


def belongs_to_pair(path: Path, dest: Path) -> bool:
    """True when `path` is `dest` or a name `dest`'s data file may take."""
    p, d = absolute(path), absolute(dest)
    if same_path(p, d):
        return True
    # Folders compared resolved: one folder may be spelt through a link and a `..` (absolute keeps links).
    return same_path(p.parent, d.parent) and re.fullmatch(re.escape(d.name) + r"(\.\d+)?\.data", p.name) is not None
