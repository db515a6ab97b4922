from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parent.parent.parent / "sample_models"


@pytest.fixture(scope="session")
def encoder_block():
    path = SAMPLES / "encoder_block.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is missing (python sample_models/build.py)")
    return path
