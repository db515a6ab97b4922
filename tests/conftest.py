import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `import helpers`

import helpers  # noqa: E402

import quake_onnx  # noqa: E402

ISAS = quake_onnx.available_isas()


def pytest_generate_tests(metafunc):
    # Every test taking `isa` runs on every kernel table this CPU has.
    if "isa" in metafunc.fixturenames:
        metafunc.parametrize("isa", ISAS)


@pytest.fixture(scope="session")
def session_cache():
    """Sessions keyed by (model bytes, isa, threads): building one per test
    case would dominate the suite's run time."""
    cache = {}

    def get(model, isa=None, threads=1):
        key = (model.SerializeToString(), isa, threads)
        if key not in cache:
            cache[key] = helpers.make_session(model, isa, threads)
        return cache[key]

    return get
