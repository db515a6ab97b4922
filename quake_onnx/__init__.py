"""quake-onnx: fast approximate exponentials for ONNX Runtime.

    import onnxruntime as ort, quake_onnx
    so = ort.SessionOptions()
    so.register_custom_ops_library(quake_onnx.get_library_path())
"""
from __future__ import annotations

from ._library import available_isas, get_library_path, selected_isa

__version__ = "0.1.0"
DOMAIN = "com.quake"

__all__ = ["DOMAIN", "__version__", "available_isas", "get_library_path", "selected_isa"]
