"""The README's commands and snippets, run as a user would run them."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

import quake_onnx

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    assert "./run-tests.sh" in README
    assert "./run-tests.sh" in (ROOT / ".ci" / "run").read_text()


def test_main_command_steps_run_on_the_sample(tmp_path):
    # quickstart.sh = install, then these two commands.
    script = (ROOT / "quickstart.sh").read_text()
    assert "quake-onnx optimize sample_models/encoder_block.onnx" in script and "quake-onnx demo" in script
    out = tmp_path / "encoder_block.quake.onnx"
    cli = [str(Path(sys.executable).parent / "quake-onnx")]  # the entry point of the environment under test
    subprocess.run(cli + ["optimize", str(ROOT / "sample_models/encoder_block.onnx"), str(out)], check=True,
                   capture_output=True)
    assert out.is_file()
    done = subprocess.run(cli + ["demo", "--models", str(ROOT / "sample_models"), "--optimized", str(out), "--runs", "3"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout


def test_usage_snippet_runs(tmp_path):
    snippet = re.search(r"## Using the library\n\n((?:    .*\n|\n)+)", README).group(1)
    code = "\n".join(line[4:] for line in snippet.splitlines())
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["X"], ["Y"], domain="com.quake")], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.quake", 1)])
    path = tmp_path / "model_with_com_quake_nodes.onnx"
    onnx.save(model, path)
    scope: dict = {}
    code = code.replace('"model_with_com_quake_nodes.onnx"', repr(str(path)))
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["session"].get_outputs()[0].name == "Y"
    assert quake_onnx.get_library_path().endswith(".so")
