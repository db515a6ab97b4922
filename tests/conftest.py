import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `import helpers`

import helpers  # noqa: E402

import quake_onnx  # noqa: E402


def _stale_modules() -> list[str]:
    """The Python files of this checkout's quake_onnx that the imported one
    (an installed copy) lacks or has otherwise: tests would then test old code."""
    source = Path(__file__).resolve().parent.parent / "quake_onnx"
    imported = Path(quake_onnx.__file__).resolve().parent
    if imported == source or not source.is_dir():
        return []
    return [
        str(f.relative_to(source))
        for f in sorted(source.rglob("*.py"))
        if not (imported / f.relative_to(source)).is_file()
        or (imported / f.relative_to(source)).read_bytes() != f.read_bytes()
    ]


_STALE = _stale_modules()
if _STALE:  # e.g. a new refusal missing: a test of it could write over a real file
    pytest.exit(
        f"the quake_onnx imported from {Path(quake_onnx.__file__).parent} differs from this checkout's "
        f"({', '.join(_STALE[:3])}{', ...' if len(_STALE) > 3 else ''}): run `pip install .` (what "
        "./run-tests.sh does) or put the checkout first on PYTHONPATH",
        returncode=2,
    )

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
