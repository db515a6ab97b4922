"""Bad models fail with a clear ONNX Runtime error naming the node and the
problem: attributes when the session is created, shapes when it runs. And
every valid model is accepted."""

import math
import os
import re

import numpy as np
import pytest
from helpers import make_model, make_session, node_name, run, session_options

import quake_onnx

ALL_OPS = ("Exp", "Sigmoid", "Silu", "Gelu", "Softmax", "LogSoftmax")


def creation_error(model):
    with pytest.raises(Exception) as info:
        make_session(model)
    return str(info.value)


def assert_names(message, *needles):
    for needle in needles:
        assert re.search(re.escape(str(needle)), message, re.IGNORECASE), f"{needle!r} not in: {message}"


@pytest.mark.parametrize("order", [0, 4, -1])
@pytest.mark.parametrize("op", ALL_OPS)
def test_bad_order(op, order):
    message = creation_error(make_model(op, {"order": order}))
    assert_names(message, node_name(op), "order", f"got {order}")


BAD_ATTRS = [
    ("Softmax", {"axis": 3}, ["axis", "3", "rank 3"]),
    ("Softmax", {"axis": -4}, ["axis", "-4", "rank 3"]),
    ("LogSoftmax", {"axis": 3}, ["axis", "3", "rank 3"]),
    ("LogSoftmax", {"axis": -4}, ["axis", "-4", "rank 3"]),
    ("Softmax", {"method": "foo"}, ["method", '"foo"']),
    ("Softmax", {"bits": 1}, ["bits", "got 1"]),
    ("Softmax", {"bits": 9}, ["bits", "got 9"]),
    ("Softmax", {"clip": 0.5}, ["clip", "0.5"]),
    ("Softmax", {"clip": math.inf}, ["clip", "inf"]),
    ("Softmax", {"method": "exaq", "bits": 1}, ["bits", "got 1"]),
    ("Softmax", {"method": "exaq", "bits": 9}, ["bits", "got 9"]),
    ("Softmax", {"method": "exaq", "clip": 0.5}, ["clip", "0.5"]),
    ("Softmax", {"method": "exaq", "clip": -math.inf}, ["clip", "inf"]),
    ("Softmax", {"method": "exaq", "clip": math.nan}, ["clip", "nan"]),
    ("Softmax", {"method": "exaq", "bits": 3.0}, ["bits", "an int"]),
    ("Silu", {"alpha": 0.0}, ["alpha", "got 0"]),
    ("Silu", {"alpha": -1.0}, ["alpha", "got -1"]),
    ("Silu", {"alpha": math.nan}, ["alpha", "nan"]),
    ("Silu", {"alpha": math.inf}, ["alpha", "inf"]),
    ("Gelu", {"approximate": "fast"}, ["approximate", '"fast"']),
    # A wrong attribute type is not silently read as the default.
    ("Exp", {"order": 2.0}, ["order", "an int"]),
    ("Silu", {"alpha": 2}, ["alpha", "a float"]),
    ("Gelu", {"approximate": 1}, ["approximate", "a string"]),
]


@pytest.mark.parametrize("op,attrs,needles", BAD_ATTRS, ids=[f"{o}-{a}" for o, a, _ in BAD_ATTRS])
def test_bad_attribute(op, attrs, needles):
    message = creation_error(make_model(op, attrs, ("A", "B", "C")))
    assert_names(message, node_name(op), *needles)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_axis_out_of_range_at_run_time_when_rank_unknown(op):
    # Without a stated rank the check moves to Run, with the actual shape.
    sess = make_session(make_model(op, {"axis": 2}, None))
    with pytest.raises(Exception) as info:
        run(sess, np.zeros((2, 3), np.float32))
    assert_names(str(info.value), node_name(op), "axis 2", "[2,3]")
    assert run(sess, np.zeros((2, 3, 4), np.float32)).shape == (2, 3, 4)


@pytest.mark.parametrize("op", ALL_OPS)
def test_double_input_refused_at_creation(op):
    message = creation_error(make_model(op, {}, ("N",), np.float64))
    assert_names(message, node_name(op))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("bias_shape,bad_shapes", [(["L"], [(4,), (6,), (0,)]), (["P", "Q"], [(1, 5), (5, 1)])])
def test_gelu_bias_of_wrong_shape(dtype, bias_shape, bad_shapes):
    sess = make_session(make_model("Gelu", {}, ("R", "C"), dtype, with_bias=True, bias_shape=bias_shape))
    x = np.zeros((2, 5), dtype)
    for bad in bad_shapes:
        with pytest.raises(Exception) as info:
            run(sess, x, np.zeros(bad, dtype))
        assert_names(str(info.value), node_name("Gelu"), "B must be 1-D", "[2,5]", str(list(bad)).replace(" ", ""))
    if len(bias_shape) == 1:
        assert run(sess, x, np.zeros(5, dtype)).shape == (2, 5)


def test_unknown_quake_isa_is_refused(monkeypatch):
    monkeypatch.setenv("QUAKE_ISA", "mmx")
    with pytest.raises(Exception) as info:
        session_options()
    assert_names(str(info.value), "QUAKE_ISA", "scalar")  # names the variable and the choices


@pytest.mark.parametrize(
    "variable, value, needles",
    [
        ("QUAKE_ISA", "mmx", ["QUAKE_ISA='mmx'", "scalar"]),
        ("QUAKE_NEON_BF16", "bfmmmla", ["QUAKE_NEON_BF16", "bfdot"]),
        ("QUAKE_F16", "half", ["QUAKE_F16='half'", "float32", "lanes"]),
    ],
)
def test_selected_isa_raises_for_a_refused_value(monkeypatch, variable, value, needles):
    # The library answers with its error text; the Python API must not pass it
    # on as if it were the name of a table.
    assert quake_onnx.selected_isa() in quake_onnx.available_isas()
    monkeypatch.setenv(variable, value)
    for ask in (
        quake_onnx.selected_isa,
        quake_onnx._library.attention_bf16_engine,
        quake_onnx._library.float16_engine,
    ):
        with pytest.raises(ValueError) as info:
            ask()
        assert_names(str(info.value), *needles)


def test_float16_engine_says_why_lanes_did_not_take_effect(monkeypatch):
    # QUAKE_F16=lanes must never read as granted where it changed nothing.
    cpuinfo = "/proc/cpuinfo"
    has_fp16 = os.path.exists(cpuinfo) and "avx512_fp16" in open(cpuinfo).read().split()
    default = quake_onnx._library.float16_engine()
    if has_fp16 and quake_onnx.selected_isa() == "avx512":  # QUAKE_F16=auto measured the lanes
        assert "(QUAKE_F16=auto" in default, default
    else:
        assert default in ("float32 lanes, converted in registers", "float32, converted in blocks")
    monkeypatch.setenv("QUAKE_F16", "lanes")
    engine = quake_onnx._library.float16_engine()
    if has_fp16 and quake_onnx.selected_isa() == "avx512":
        assert engine == "AVX512-FP16 lanes"
    else:
        assert "QUAKE_F16=lanes:" in engine, engine
    monkeypatch.setenv("QUAKE_ISA", "scalar")
    scalar = quake_onnx._library.float16_engine()
    assert scalar == "float32, converted in blocks (QUAKE_F16=lanes: not on the scalar table)"


def test_unknown_quake_neon_bf16_is_refused(monkeypatch):
    # Checked on every machine (only AArch64 reads it), so a typo never passes silently.
    monkeypatch.setenv("QUAKE_NEON_BF16", "bfmmmla")
    with pytest.raises(Exception) as info:
        session_options()
    assert_names(str(info.value), "QUAKE_NEON_BF16", "'bfmmmla'", "bfmmla", "bfdot")


VALID = {
    "Exp": [{}],
    "Sigmoid": [{}],
    "Silu": [{"alpha": a} for a in (1e-3, 1.0, 1.702, 100.0)],
    "Gelu": [{"approximate": a} for a in ("none", "tanh")],
    "Softmax": [{"axis": a} for a in range(-3, 3)]
    + [{"method": "quake", "bits": b} for b in range(2, 9)]
    + [{"clip": c} for c in (0.0, -1.5, -1e30)]
    + [{"method": "exaq", "bits": b} for b in range(2, 9)]
    + [{"method": "exaq", "clip": c, "axis": a} for c in (0.0, -1.5, -1e30) for a in (0, -1)],
    "LogSoftmax": [{"axis": a} for a in range(-3, 3)],
}
VALID_CASES = [(op, dict(a, order=o)) for op, attrs in VALID.items() for a in attrs for o in (1, 2, 3)]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("op,attrs", VALID_CASES, ids=[f"{o}-{a}" for o, a in VALID_CASES])
def test_valid_models_are_accepted(op, attrs, dtype):
    x = np.linspace(-3, 3, 2 * 3 * 4).reshape(2, 3, 4).astype(dtype)
    for with_bias in (False, True) if op == "Gelu" else (False,):
        sess = make_session(make_model(op, attrs, ("A", "B", "C"), dtype, with_bias=with_bias))
        y = run(sess, x, np.ones(4, dtype) if with_bias else None)
        assert y.shape == x.shape and y.dtype == dtype and np.isfinite(y).all()


@pytest.mark.parametrize("command", [["ops", "--shape", "4x4"], ["exaq", "--shape", "4x4"], ["attention"]])
def test_the_benchmark_command_refuses_a_bad_quake_isa_in_one_line(monkeypatch, command):
    from typer.testing import CliRunner

    from quake_onnx.bench.__main__ import app

    monkeypatch.setenv("QUAKE_ISA", "mmx")
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2 and not isinstance(result.exception, ValueError)
    assert result.stderr.splitlines() == ["error: QUAKE_ISA='mmx' is not one of auto, scalar, neon, avx2, avx512"]


@pytest.mark.parametrize("command", [[], ["ops"], ["exaq"], ["attention"]])
def test_benchmark_help_answers_under_a_bad_quake_isa(monkeypatch, command):
    """The table is checked by each command, so --help is not refused for it."""
    from typer.testing import CliRunner

    from quake_onnx.bench.__main__ import app

    monkeypatch.setenv("QUAKE_ISA", "mmx")
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "QUAKE_ISA" not in result.output


def test_a_quake_isa_of_another_architecture_is_refused_not_run_as_scalar(monkeypatch):
    """neon on x86-64 (avx2 on AArch64) once ran the scalar (NEON) table in
    silence; it names the tables this architecture has instead."""
    import platform

    from typer.testing import CliRunner

    from quake_onnx.bench.__main__ import app

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the x86-64 wording")
    monkeypatch.setenv("QUAKE_ISA", "neon")
    result = CliRunner().invoke(app, ["ops", "--shape", "4x4"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: QUAKE_ISA='neon' is a table of another architecture (x86-64 runs auto, scalar, avx2, avx512)"
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["ops", "--dtype", "float64"], "--dtype takes float32 or float16, got 'float64'"),
        (["ops", "--threads", "x"], "--threads takes comma-separated integers, got 'x'"),
        (["exaq", "--shape", "3xq"], "--shape takes positive sizes like 12x128x128, got '3xq'"),
        (["attention", "--threads", "0"], "--threads values must be positive integers, got '0'"),
        (["ops", "--markdown", "no-such-folder/ops.md"], "cannot write file no-such-folder/ops.md: folder "),
        (["ops", "--markdown", "-"], "the table goes to standard output anyway; give a file path"),
        (["ops", "--markdown", "a-folder"], "file a-folder is a directory"),
        (["ops", "--markdown", "/dev/null"], "file /dev/null is a device, not a regular file"),
    ],
)
def test_the_benchmark_command_refuses_bad_options_in_one_line_before_timing(args, message, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from quake_onnx.bench.__main__ import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-folder").mkdir()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stdout == "", "printed (or timed) before refusing the option"
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and message in line, line


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_benchmark_command_times_and_writes_its_table(dtype, tmp_path):
    from typer.testing import CliRunner

    from quake_onnx.bench.__main__ import app

    out = tmp_path / "ops.md"
    args = ["ops", "--op", "Exp", "--shape", "4x8", "--threads", "1", "--orders", "1", "--min-time", "0.02"]
    args += ["--rounds", "1", "--no-denormal", "--dtype", dtype, "--markdown", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert f"{dtype} tensors" in text
    # A float16 table says what computed it (on an AVX512-FP16 CPU, which ops auto's measurement gave the lanes).
    assert ("float16 Exp, Sigmoid, Silu, Gelu on: " in text) == (dtype == "float16"), text
    (row,) = [line for line in text.splitlines() if line.startswith("| Exp | 4x8 | 1 |")]
    assert row.count("x,") == 1, row  # one ratio: ORT against order 1
    assert [p.name for p in tmp_path.iterdir()] == ["ops.md"], "a temporary was left behind"


@pytest.mark.parametrize(
    "args, message",
    [
        (["optimize", "", "out.onnx"], "IN was given an empty path"),
        (["optimize", "IN", ""], "OUT was given an empty path"),
        (["optimize", "--no-ort-fusions", "", "out.onnx"], "IN was given an empty path"),
        (["zoo", ""], "DIR was given an empty path"),
        (["check", "IN", "--custom-ops-library", ""], "--custom-ops-library was given an empty path"),
        (["check", "IN", "--custom-ops-library="], "--custom-ops-library was given an empty path"),
        (["tune", "IN", "out.onnx", "--inputs", ""], "--inputs was given an empty path"),
    ],
)
def test_an_empty_path_is_one_line_not_the_working_folder(args, message, tmp_path, monkeypatch):
    """Typer reads an empty path as '.': `zoo ""` walked the working folder's
    models and `--custom-ops-library ""` blamed '.'; now nothing runs."""
    import onnx
    from typer.testing import CliRunner

    from quake_onnx.cli import app

    src = make_model("Softmax", shape=[2, 8])
    onnx.save(src, tmp_path / "in.onnx")
    onnx.save(src, tmp_path / "other.onnx")  # what a walk of the working folder would find
    monkeypatch.chdir(tmp_path)
    args = [str(tmp_path / "in.onnx") if a == "IN" else a for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {message}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_empty_value_that_is_no_path_keeps_its_meaning(tmp_path):
    """--skip-nodes '' names the unnamed nodes: it is not refused as a path,
    and the unnamed Softmax stays ONNX's while the named Exp is replaced."""
    import onnx
    from onnx import TensorProto, helper
    from typer.testing import CliRunner

    from quake_onnx.cli import app

    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["s"]), helper.make_node("Exp", ["s"], ["y"], name="exp")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "in.onnx")
    args = ["optimize", str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), "--min-elements", "1"]
    result = CliRunner().invoke(app, [*args, "--skip-nodes", ""])
    assert result.exit_code == 0, result.output
    kept = {(n.op_type, n.domain) for n in onnx.load(tmp_path / "out.onnx").graph.node}
    assert ("Softmax", "") in kept and ("Exp", "com.quake") in kept


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, tmp_path):
    """Typer turns KeyboardInterrupt into Exit(130), which came back as a
    return value: the process ended with 130 and nothing on stderr."""
    import onnx
    from typer.testing import CliRunner

    import quake_onnx.check.commands as commands
    from quake_onnx.cli import app

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "check_command", interrupted)
    onnx.save(make_model("Softmax", shape=[2, 8]), tmp_path / "in.onnx")
    result = CliRunner().invoke(app, ["check", str(tmp_path / "in.onnx")])
    assert result.exit_code == 130
    assert result.stderr.splitlines() == ["error: interrupted"]
