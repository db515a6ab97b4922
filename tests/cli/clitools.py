"""Running the CLI in-process and small models for its tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from quake_onnx.cli import app

_runner = CliRunner()


def cli(*args: object):
    result = _runner.invoke(app, [str(a) for a in args], prog_name="quake-onnx")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def assert_one_line_error(result, code: int = 2, contains: str = "") -> str:
    """Exit code `code`, exactly one `error:` line on stderr, no traceback anywhere."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert contains.lower() in lines[0].lower(), lines[0]
    return lines[0]


def folder_state(folder: Path) -> dict:
    """Names, sizes and mtimes of every file: "nothing changed" means equal states."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def quake_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == "com.quake"]


def wide_model(n: int = 512) -> tuple[onnx.ModelProto, dict]:
    """MatMul with an n x n weight (n*n*4 bytes: big enough to go to external
    data), then SiLU as x * Sigmoid(x) and a Softmax."""
    w = numpy_helper.from_array((np.random.default_rng(0).standard_normal((n, n)) * 0.05).astype(np.float32), "W")
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["h"], name="mm"),
        helper.make_node("Sigmoid", ["h"], ["s"], name="sig"),
        helper.make_node("Mul", ["h", "s"], ["silu"], name="mul"),
        helper.make_node("Softmax", ["silu"], ["Y"], name="sm", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, n])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, n])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    feeds = {"X": np.random.default_rng(1).standard_normal((2, n)).astype(np.float32)}
    return model, feeds


def run_model(path: Path, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    import quake_onnx

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return quake_onnx.InferenceSession(os.fspath(path), so).run(None, feeds)[0]


def encoder_feeds() -> dict:
    rng = np.random.default_rng(1)
    mask = np.zeros((1, 1, 64, 64), np.float32)
    mask[..., 48:] = -np.inf
    return {"X": rng.standard_normal((1, 64, 128)).astype(np.float32), "MASK": mask}


def entry_point() -> list[str]:
    """The installed `quake-onnx` command (beside this Python)."""
    exe = shutil.which("quake-onnx", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "quake_onnx.cli"]


def run_real(*args: object, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The command in a process of its own: its real stderr, ONNX Runtime's
    C++ log lines included, which CliRunner cannot see."""
    import quake_onnx

    env = dict(os.environ, PYTHONPATH=str(Path(quake_onnx.__file__).parent.parent))
    return subprocess.run(
        entry_point() + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd
    )


def assert_one_line_error_real(proc: subprocess.CompletedProcess, code: int = 2, contains: str = "") -> str:
    """As assert_one_line_error, for run_real."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert contains.lower() in lines[0].lower(), lines[0]
    return lines[0]


def file_bytes(*paths: Path) -> dict:
    """Contents by path: "the input is unchanged" means equal dicts."""
    return {str(p): p.read_bytes() for p in paths}
