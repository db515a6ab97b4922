import importlib.util
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent.parent / "sample_models"

# Only while the pass's file does not exist (a broken pass must fail the
# tests, not be replaced): a stand-in keeps the CLI testable.
STUB_PASS = importlib.util.find_spec("quake_onnx.rewrite.passes") is None
if STUB_PASS:
    sys.path.insert(0, str(HERE))
    import _stub_pass  # noqa: E402

    sys.modules["quake_onnx.rewrite.passes"] = _stub_pass
    STUB_PASS = True


@pytest.fixture(scope="session")
def encoder_block():
    path = SAMPLES / "encoder_block.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is missing (python sample_models/build.py)")
    return path
