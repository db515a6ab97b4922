"""Locating the compiled com.quake library and asking it what it runs."""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path

import quake_onnx

_NAMES = {"win32": "quake_ops.dll", "darwin": "libquake_ops.dylib"}
LIBRARY_NAME = _NAMES.get(sys.platform, "libquake_ops.so")


ENV = "QUAKE_ONNX_LIBRARY"


def get_library_path() -> str:
    """Absolute path of the custom-op library, for SessionOptions.register_custom_ops_library.

    QUAKE_ONNX_LIBRARY overrides it (e.g. a sanitizer build from CMake).
    Raises FileNotFoundError when QUAKE_ONNX_LIBRARY names no file (the
    message names the variable and the path) or when this installation has
    no compiled library.
    """
    override = library_override()
    if override:
        path = Path(override)
        if not path.is_file():
            raise FileNotFoundError(f"{ENV}={override} " + ("is not a file" if path.exists() else "does not exist"))
        return str(path.resolve())
    # An editable install may keep the compiled file apart from the sources:
    # every folder of the package's __path__ is a candidate.
    for folder in quake_onnx.__path__:
        candidate = Path(folder) / LIBRARY_NAME
        if candidate.is_file():
            return str(candidate.resolve())
    # The usual way here: `python -m ...` run inside a source checkout imports
    # the checkout's quake_onnx (the working directory comes first on sys.path)
    # instead of the installed one, so say where the package came from.
    raise FileNotFoundError(
        f"{LIBRARY_NAME} is not part of the quake_onnx in {Path(quake_onnx.__path__[0]).resolve()}; "
        "reinstall with `pip install .` so the library is compiled, or run from outside a source checkout"
    )


def library_override() -> str:
    """The path QUAKE_ONNX_LIBRARY names, or "" when it is unset or empty."""
    return os.environ.get(ENV, "")


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(get_library_path())
    for name in ("QuakeSelectedIsa", "QuakeAvailableIsas", "QuakeAttentionBf16Engine", "QuakeFloat16Engine"):
        getattr(lib, name).restype = ctypes.c_char_p
    return lib


def available_isas() -> list[str]:
    """Kernel tables this build and CPU can run, lowest first (e.g. ['scalar', 'avx2', 'avx512']).

    Raises FileNotFoundError (get_library_path) or OSError when the library
    cannot be loaded."""
    return _lib().QuakeAvailableIsas().decode().split(",")


def selected_isa() -> str:
    """The table a session created now would use (honours QUAKE_ISA): one of
    available_isas(), e.g. "avx2".

    Raises ValueError when QUAKE_ISA (or QUAKE_NEON_BF16) holds a value the
    library refuses, as registering the library then fails too; the message
    names the variable, its value and the choices. Raises FileNotFoundError
    (get_library_path) or OSError when the library cannot be loaded."""
    # The library answers a refused value with its error text instead of a name.
    answer = _lib().QuakeSelectedIsa().decode()
    if answer not in available_isas():
        raise ValueError(answer)
    return answer


def float16_engine() -> str:
    """What computes float16 Exp, Sigmoid, Silu and Gelu in a session created
    now (honours QUAKE_ISA and QUAKE_F16): "AVX512-FP16 lanes" (QUAKE_F16=lanes
    on a CPU with AVX512-FP16: orders 1 and 2 in float16 arithmetic, ops.md
    "float16 lanes"); under QUAKE_F16=auto on such a CPU "AVX512-FP16 lanes for
    Exp, Sigmoid at order 1; ... measured faster (QUAKE_F16=auto); float32
    lanes, converted in registers, for the rest", or "float32 lanes, converted
    in registers (QUAKE_F16=auto: AVX512-FP16 lanes not measured 10 % faster)";
    "float32 lanes, converted in registers" (the SIMD tables)
    or "float32, converted in blocks" (the scalar table); when QUAKE_F16=lanes
    cannot take effect, the text adds why in brackets (e.g. "this CPU has no
    AVX512-FP16").

    Raises ValueError for a value of QUAKE_ISA or QUAKE_F16 the library
    refuses, and FileNotFoundError or OSError as selected_isa does."""
    selected_isa()  # the same choice of table: raises for a refused value
    return _lib().QuakeFloat16Engine().decode()


def attention_bf16_engine() -> str:
    """What runs com.quake Attention's precision "bfloat16" in a session created
    now (honours QUAKE_ISA and QUAKE_NEON_BF16): "AVX512-BF16", "NEON BFMMLA",
    "NEON BFDOT" or "float32 fallback".

    Raises ValueError for a value of either variable the library refuses, and
    FileNotFoundError or OSError as selected_isa does."""
    selected_isa()  # the same choice of table: raises for a refused value
    return _lib().QuakeAttentionBf16Engine().decode()
