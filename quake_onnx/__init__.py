"""quake-onnx: fast approximate exponentials for ONNX Runtime.

    import onnxruntime as ort, quake_onnx
    so = ort.SessionOptions()
    so.register_custom_ops_library(quake_onnx.get_library_path())

or, to rewrite a model and run it:

    model, report = quake_onnx.optimize("model.onnx", "model.quake.onnx")
    session = quake_onnx.InferenceSession("model.quake.onnx")

or let it measure what to replace, on this machine and your inputs:

    model, report = quake_onnx.tune("model.onnx", "model.tuned.onnx", inputs="data.npz")
"""

from __future__ import annotations

from ._library import available_isas, get_library_path, selected_isa
from .calibrate import calibrate  # noqa: E402  (exaq clips from sample inputs)

# Bound after the submodule import so `quake_onnx.optimize` is the function.
from .optimize import InferenceSession, optimize  # noqa: E402
from .tuning import tune  # noqa: E402  (quake-onnx tune: choices measured here)

__version__ = "0.1.0"
DOMAIN = "com.quake"

__all__ = [
    "DOMAIN",
    "InferenceSession",
    "__version__",
    "available_isas",
    "calibrate",
    "get_library_path",
    "optimize",
    "selected_isa",
    "tune",
]
