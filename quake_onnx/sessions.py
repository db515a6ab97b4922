"""Every ONNX Runtime session the tool opens: quiet, with the libraries the model needs.

Which custom-op libraries are registered (docs/optimize.md, "Custom-op
libraries"):
- the com.quake library, on sessions that may meet com.quake nodes (a
  QUAKE_ONNX_LIBRARY naming no file is refused as a LibraryError);
- onnxruntime-extensions' library, on a session of any model that imports
  the `ai.onnx.contrib` domain (it is a dependency of this package);
- every library the user names (`--custom-ops-library PATH`, repeatable;
  `custom_ops_libraries=[...]` in Python), on every session.
Sessions opened for the tool's own work log nothing below ORT's fatal level:
what ORT has to say reaches the user as the tool's one `error:` line.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Iterable, Iterator, Optional, Sequence, Union

import onnx
import onnxruntime as ort

from .modelio import ModelFileError, absolute

CONTRIB_DOMAIN = "ai.onnx.contrib"
QUAKE_DOMAIN = "com.quake"
QUIET = 4  # ORT's fatal level: its error lines would come before ours
ModelSource = Union[str, os.PathLike, bytes]


class LibraryError(ModelFileError):
    """A custom-op library the user named (--custom-ops-library, QUAKE_ONNX_LIBRARY)
    that does not exist or does not load (exit 2)."""


# The longest message one_line gives: ORT's reasons take a few hundred
# characters; a longer one (a dump of names or values) is cut.
MESSAGE_LIMIT = 500


def one_line(error: BaseException, limit: int = MESSAGE_LIMIT) -> str:
    """An exception's message, ONNX Runtime's above all, as one line: every
    line of it, whitespace folded, each without the C++ source location and
    function signature ORT puts before some reasons, joined by "; " (a space
    after a line ending in punctuation); nothing from a "Stacktrace:" line on;
    cut to `limit` characters with " ... " in the middle (ORT's reason comes
    last, after the node's inputs and outputs)."""
    parts = []
    for line in str(error).splitlines():
        line = " ".join(line.split())
        if line == "Stacktrace:":  # ORT's frames follow: places in its sources, not the reason
            break
        if line:
            parts.append(_without_signature(line))
    if not parts:
        return type(error).__name__
    text = parts[0]
    for part in parts[1:]:
        text += (" " if text[-1] in ".,:;!?" else "; ") + part
    if len(text) > limit:  # ORT puts the reason last ("In Node, (...) : (...) , Error <reason>")
        tail = limit // 2
        text = text[: limit - tail - 5].rstrip() + " ... " + text[-tail:].lstrip()
    return text


# ".../model.cc:256 " before a C++ function signature, as ORT's ORT_ENFORCE and
# ORT_THROW messages have it.
_SOURCE_LOCATION = re.compile(r"[^\s:]*\.(?:cc|cpp|cxx|h|hpp):\d+ ")
# What comes between the location and the signature's "(": a return type and
# a qualified name (onnxruntime::Model::Model, void ns::f, std::string ns::g).
_SIGNATURE_HEAD = re.compile(r"[\w:<>,*& ~]+")


def _without_signature(text: str) -> str:
    """`text` without "/path/file.cc:LINE ret ns::Fn(args) [const]" (the place
    in ONNX Runtime's sources, not the reason); unchanged when that is not
    exactly what follows the location."""
    found = _SOURCE_LOCATION.search(text)
    if found is None:
        return text
    paren = text.find("(", found.end())
    if paren < 0 or not _SIGNATURE_HEAD.fullmatch(text, found.end(), paren) or "::" not in text[found.end() : paren]:
        return text
    depth, end = 0, None
    for i in range(paren, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                end = i + 1
                break
    if end is None:
        return text
    rest = text[end:]
    if rest.startswith(" const"):
        rest = rest[len(" const") :]
    rest = rest.strip()
    if not rest:
        return text  # nothing but the place: keep it rather than say nothing
    head = text[: found.start()].rstrip()
    return f"{head} {rest}" if head else rest


def user_libraries(paths: Optional[Iterable[Union[str, os.PathLike]]]) -> tuple[str, ...]:
    """The user's library paths made absolute (the result must not depend on
    the working folder), each checked to load before any work; raises
    LibraryError for one that is not a file or that ONNX Runtime cannot register."""
    out = []
    for p in paths or ():
        path = absolute(p)
        if not path.is_file():
            raise LibraryError(f"custom-op library {p} " + ("is not a file" if path.exists() else "does not exist"))
        out.append(str(path))
    out = list(dict.fromkeys(out))
    options(out)  # registers each once: a file that is no library fails here, not after minutes of work
    return tuple(out)


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node of the model: main graph, subgraphs at any depth, functions."""

    def visit(nodes) -> Iterator[onnx.NodeProto]:
        for node in nodes:
            yield node
            for attr in node.attribute:
                if attr.HasField("g"):
                    yield from visit(attr.g.node)
                for g in attr.graphs:
                    yield from visit(g.node)

    yield from visit(model.graph.node)
    for function in model.functions:
        yield from visit(function.node)


def domains(model: onnx.ModelProto, imports: bool = True) -> set[str]:
    """Every domain the model's nodes (subgraphs and functions included) use,
    and, with `imports`, every domain it imports."""
    found = {o.domain for o in model.opset_import} if imports else set()
    found.update(node.domain for node in _all_nodes(model))
    found.update(function.domain for function in model.functions)
    return found


def quake_ops(model: onnx.ModelProto) -> list[str]:
    """The op types of the model's com.quake nodes (subgraphs and functions
    included), each once, sorted: empty for a model running ONNX Runtime's own ops."""
    return sorted({node.op_type for node in _all_nodes(model) if node.domain == QUAKE_DOMAIN})


@functools.lru_cache(maxsize=1)
def extensions_library() -> Optional[str]:
    try:
        from onnxruntime_extensions import get_library_path
    except ImportError:
        return None
    return get_library_path()


def quake_library() -> Optional[str]:
    """The com.quake library's path; None when this installation has none (a
    model without com.quake nodes still loads, one with them says what is
    missing: missing_quake_library). Raises LibraryError when
    QUAKE_ONNX_LIBRARY names no file: the user asked for that library, and
    running without it would fail later as "com.quake:... is not a
    registered function/op"."""
    from ._library import get_library_path, library_override

    missing = missing_quake_library()
    if missing is None:
        return get_library_path()
    if library_override():
        raise LibraryError(missing)
    return None


def missing_quake_library() -> Optional[str]:
    """Why there is no com.quake library (get_library_path's words: the
    variable's path, or what to reinstall), or None when there is one."""
    from ._library import get_library_path

    try:
        get_library_path()
    except FileNotFoundError as e:
        return str(e)
    return None


def libraries_for(model: Optional[onnx.ModelProto], extra: Sequence[str] = (), quake: bool = True) -> list[str]:
    """The libraries a session of `model` needs (None: the model is unknown,
    so onnxruntime-extensions is registered in case). Raises LibraryError,
    with `quake`, when QUAKE_ONNX_LIBRARY names no file (quake_library)."""
    libs = []
    if quake:
        path = quake_library()
        if path is not None:
            libs.append(path)
    if model is None or CONTRIB_DOMAIN in domains(model):
        ext_lib = extensions_library()
        if ext_lib:
            libs.append(ext_lib)
    libs.extend(extra)
    return list(dict.fromkeys(libs))


def options(
    libraries: Sequence[str] = (),
    *,
    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    threads: int = 1,
    quiet: bool = True,
) -> ort.SessionOptions:
    """SessionOptions with `libraries` registered; raises LibraryError when one does not load."""
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if quiet:
        so.log_severity_level = QUIET
    for lib in libraries:
        try:
            so.register_custom_ops_library(lib)
        except Exception as e:
            raise LibraryError(_isa_refused(lib) or f"{_library_name(lib)} does not load: {one_line(e)}") from None
    return so


def _isa_refused(lib: str) -> Optional[str]:
    """The library's own words when `lib` is the com.quake library and it
    refused QUAKE_ISA or QUAKE_NEON_BF16 (the library is fine, the variable is not)."""
    from ._library import get_library_path, selected_isa

    try:
        if os.path.realpath(get_library_path()) != os.path.realpath(lib):
            return None
        selected_isa()
    except ValueError as e:
        return str(e)
    except Exception:
        return None
    return None


def _library_name(lib: str) -> str:
    """How an error names the library: by QUAKE_ONNX_LIBRARY when that is where it came from."""
    from ._library import ENV, library_override

    override = library_override()
    if override and os.path.realpath(override) == os.path.realpath(lib):
        return f"{ENV}={override}"
    return f"custom-op library {lib}"


def open_session(source: ModelSource, so: ort.SessionOptions) -> ort.InferenceSession:
    """An InferenceSession on the CPU provider."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


def graph_of(source: ModelSource) -> Optional[onnx.ModelProto]:
    """The model's graph without external data, to see which domains it uses;
    None when it cannot be read (ORT will then say why)."""
    try:
        if isinstance(source, (bytes, bytearray)):
            return onnx.load_from_string(bytes(source))
        return onnx.load(os.fspath(source), load_external_data=False)
    except Exception:
        return None
