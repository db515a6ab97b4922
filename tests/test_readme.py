"""The README's commands and snippets, run as a user would run them."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

import quake_onnx
import quake_onnx._library

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    assert "./run-tests.sh" in README
    assert "./run-tests.sh" in (ROOT / ".ci" / "run").read_text()


def _quickstart_commands() -> list[list[str]]:
    """The quake-onnx lines of quickstart.sh, as argument lists."""
    script = (ROOT / "quickstart.sh").read_text()
    return [shlex.split(line)[1:] for line in script.splitlines() if line.startswith(".venv/bin/quake-onnx ")]


def test_main_command_steps_run_on_the_sample(tmp_path):
    # quickstart.sh = install, then optimize, check and zoo on the samples:
    # run exactly its lines, with build/sample/ in tmp_path and fewer timed runs.
    commands = _quickstart_commands()
    assert [c[0] for c in commands] == ["optimize", "check", "zoo"]
    assert commands[0][1] == "sample_models/zoo/bert_encoder/model.onnx"
    assert commands[2][1] == "sample_models"
    cli = [str(Path(sys.executable).parent / "quake-onnx")]  # the entry point of the environment under test
    for args in commands:
        args = [
            str(tmp_path / a[len("build/sample/") :]) if a.startswith("build/sample/") else a for a in args if a != "$@"
        ]
        if args[0] in ("check", "zoo"):
            args += ["--runs", "3", "--warmup", "1"]
        done = subprocess.run(cli + args, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        if args[0] == "optimize":
            assert (tmp_path / "bert_encoder.quake.onnx").is_file()
        else:
            assert "PASS" in done.stdout, done.stdout
    assert "S(t) = " in done.stdout
    for report in ("zoo.json", "zoo.md", "zoo.xml"):
        assert (tmp_path / report).stat().st_size > 0


def test_usage_snippet_runs(tmp_path):
    snippet = re.search(r"## Using the library\n\n((?:    .*\n|\n)+)", README).group(1)
    code = "\n".join(line[4:] for line in snippet.splitlines())
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["X"], ["Y"], domain="com.quake")],
        "g",
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


def test_exaq_commands_of_docs_optimize_run(tmp_path):
    # docs/optimize.md, "EXAQ softmax": its two commands as written, with the
    # sample encoder block for model.onnx and generated sample inputs.
    section = (ROOT / "docs" / "optimize.md").read_text().split("## EXAQ softmax")[1]
    commands = [shlex.split(line.strip())[1:] for line in section.splitlines() if line.startswith("    quake-onnx ")]
    assert [c[0] for c in commands] == ["optimize", "calibrate"]
    rng = np.random.default_rng(0)
    for name in ("sample1.npz", "sample2.npz"):
        np.savez(
            tmp_path / name,
            X=rng.standard_normal((1, 64, 128)).astype(np.float32),
            MASK=np.zeros((1, 1, 64, 64), np.float32),
        )
    (tmp_path / "model.onnx").write_bytes((ROOT / "sample_models" / "encoder_block.onnx").read_bytes())
    cli = [str(Path(sys.executable).parent / "quake-onnx")]
    for args in commands:
        done = subprocess.run(cli + args, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    calibrated = onnx.load(tmp_path / "model.exaq.cal.onnx")
    softmax = [n for n in calibrated.graph.node if n.domain == "com.quake" and n.op_type == "Softmax"]
    assert softmax
    for node in softmax:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["method"] == b"exaq" and attrs["bits"] == 3 and attrs["clip"] < 0


def test_attention_commands_of_docs_optimize_run(tmp_path):
    # docs/optimize.md, "Attention fusion": its two commands as written, on one attention block of
    # BERT-base's heads with its padding mask at 1024 tokens (H12, S1024, D64: at the break-even).
    section = (ROOT / "docs" / "optimize.md").read_text().split("## Attention fusion")[1].split("\n## ")[0]
    commands = [shlex.split(line.strip())[1:] for line in section.splitlines() if line.startswith("    quake-onnx ")]
    assert [c[0] for c in commands] == ["optimize", "optimize"]
    shape = [1, 12, 1024, 64]
    nodes = [
        helper.make_node("Transpose", ["K"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["Q", "kt"], ["s"]),
        helper.make_node("Div", ["s", "c"], ["scaled"]),
        helper.make_node("Add", ["scaled", "M"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "V"], ["Y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "QKV"]
        + [helper.make_tensor_value_info("M", TensorProto.FLOAT, [1, 1, 1, 1024])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, shape)],
        initializer=[helper.make_tensor("c", TensorProto.FLOAT, [], [8.0])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "model.onnx")
    cli = [str(Path(sys.executable).parent / "quake-onnx")]
    outputs = []
    for args in commands:
        done = subprocess.run(cli + args, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        outputs.append(done.stdout)
    fused, per_op = onnx.load(tmp_path / "model.quake.onnx"), onnx.load(tmp_path / "model.per-op.onnx")
    assert [n.op_type for n in fused.graph.node] == ["Attention"]
    assert "replaced by com.quake Attention (scale=0.125, mask)" in outputs[0]
    assert [n.op_type for n in per_op.graph.node] == ["Transpose", "MatMul", "Div", "Add", "Softmax", "MatMul"]
    assert per_op.graph.node[4].domain == "com.quake"


def test_attention_precision_command_of_docs_optimize_runs(tmp_path):
    # docs/optimize.md, "Attention precision": its command as written, and the
    # --explain line of its example (with this machine's engine).
    section = (ROOT / "docs" / "optimize.md").read_text().split("## Attention precision")[1].split("\n## ")[0]
    commands = [shlex.split(line.strip())[1:] for line in section.splitlines() if line.startswith("    quake-onnx ")]
    assert commands == [["optimize", "model.onnx", "model.bf16.onnx", "--attention-precision", "bfloat16", "--explain"]]
    shape = [1, 12, 384, 64]
    nodes = [
        helper.make_node("Transpose", ["K"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["Q", "kt"], ["s"]),
        helper.make_node("Div", ["s", "c"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "V"], ["Y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "QKV"],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, shape)],
        initializer=[helper.make_tensor("c", TensorProto.FLOAT, [], [8.0])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "model.onnx")
    cli = [str(Path(sys.executable).parent / "quake-onnx")]
    done = subprocess.run(cli + commands[0], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, (done.stdout, done.stderr)
    engine = quake_onnx._library.attention_bf16_engine()
    assert "replaced by com.quake Attention (scale=0.125); precision bfloat16, run here by " + engine in done.stdout
    assert "; precision bfloat16, run here by AVX512-BF16" in section  # the documented example
    (node,) = onnx.load(tmp_path / "model.bf16.onnx").graph.node
    assert [a.s for a in node.attribute if a.name == "precision"] == [b"bfloat16"]
