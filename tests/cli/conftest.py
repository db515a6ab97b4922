from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parent.parent.parent / "sample_models"


@pytest.fixture(scope="session")
def encoder_block():
    path = SAMPLES / "encoder_block.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is missing (python sample_models/build.py)")
    return path


REPO = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="session")
def test_op_library() -> Path:
    """tests/oplib built by CMake (test.quake.Twice, Y = 2 X): a custom-op
    library that is neither com.quake's nor onnxruntime-extensions'. ONNX
    Runtime's headers come from the CTest build when it has them."""
    import subprocess

    build = REPO / "build" / "test-oplib"
    args = ["cmake", "-S", str(REPO / "tests" / "oplib"), "-B", str(build)]
    headers = REPO / "build" / "ctest" / "_ort_headers" / "root" / "usr" / "include" / "onnxruntime"
    if headers.is_dir():
        args.append(f"-DORT_INCLUDE_DIR={headers}")
    for step in (args, ["cmake", "--build", str(build)]):
        proc = subprocess.run(step, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return build / "libquake_test_ops.so"
