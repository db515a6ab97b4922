import json

import pytest
from checktools import FAST, SAMPLES, cli


@pytest.fixture(scope="session")
def sample_zoo(tmp_path_factory):
    """One zoo run over sample_models/ with every report, shared by the report tests."""
    out = tmp_path_factory.mktemp("zoo-reports")
    result = cli(
        "zoo",
        SAMPLES,
        *FAST,
        "--max-abs-error",
        "0.05",
        "--json",
        out / "zoo.json",
        "--markdown",
        out / "zoo.md",
        "--junit",
        out / "zoo.xml",
    )
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return {
        "result": result,
        "json": json.loads((out / "zoo.json").read_text()),
        "markdown": (out / "zoo.md").read_text(),
        "junit": out / "zoo.xml",
    }
