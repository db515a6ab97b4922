"""Models that need another custom-op library: onnxruntime-extensions' (the
ai.onnx.contrib domain, registered by itself) and any other one, named with
--custom-ops-library (here tests/oplib's test.quake.Twice, built by CMake).
Every session the tool opens gets them: optimize's oracle and verification,
inspect, check, zoo, calibrate and quake_onnx.InferenceSession; inspect and
optimize agree on every decision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from clitools import assert_one_line_error, cli, quake_nodes
from onnx import TensorProto, helper

import quake_onnx

SOFTMAX_ATOL = 2e-3  # ops.md, order 2
N = 48  # X is [N, N]: 2304 elements, above the Softmax break-even, square for Inverse
QUAKE_DOMAIN_OPSETS = [helper.make_opsetid("", 17)]


def _graph_model(nodes, outputs, inits=(), extra_opsets=()) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [N, N])
    graph = helper.make_graph(nodes, "g", [x], outputs, list(inits))
    opsets = QUAKE_DOMAIN_OPSETS + [helper.make_opsetid(d, 1) for d in extra_opsets]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def contrib_model(where: str) -> onnx.ModelProto:
    """Inverse (ai.onnx.contrib) before or after a Softmax, or a contrib op
    inside an If branch (only a subgraph uses the domain)."""
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [N, N])
    if where == "before":
        nodes = [
            helper.make_node("Inverse", ["X"], ["inv"], name="inverse", domain="ai.onnx.contrib"),
            helper.make_node("Softmax", ["inv"], ["Y"], name="sm", axis=-1),
        ]
        return _graph_model(nodes, [y], extra_opsets=["ai.onnx.contrib"])
    if where == "after":
        nodes = [
            helper.make_node("Softmax", ["X"], ["p"], name="sm", axis=-1),
            helper.make_node("Inverse", ["p"], ["Y"], name="inverse", domain="ai.onnx.contrib"),
        ]
        return _graph_model(nodes, [y], extra_opsets=["ai.onnx.contrib"])
    text = helper.make_tensor_value_info
    then = helper.make_graph(
        [helper.make_node("StringLower", ["names"], ["t"], name="lower", domain="ai.onnx.contrib")],
        "then",
        [],
        [text("t", TensorProto.STRING, [1])],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["names"], ["e"], name="id")], "else", [], [text("e", TensorProto.STRING, [1])]
    )
    nodes = [
        helper.make_node("Softmax", ["X"], ["Y"], name="sm", axis=-1),
        helper.make_node("If", ["flag"], ["S"], name="if", then_branch=then, else_branch=other),
    ]
    inits = [
        helper.make_tensor("names", TensorProto.STRING, [1], [b"Quake"]),
        helper.make_tensor("flag", TensorProto.BOOL, [], [True]),
    ]
    return _graph_model(nodes, [y, text("S", TensorProto.STRING, [1])], inits, extra_opsets=["ai.onnx.contrib"])


def twice_model() -> onnx.ModelProto:
    """test.quake.Twice before and after a Softmax."""
    nodes = [
        helper.make_node("Twice", ["X"], ["a"], name="twice_in", domain="test.quake"),
        helper.make_node("Softmax", ["a"], ["p"], name="sm", axis=-1),
        helper.make_node("Twice", ["p"], ["Y"], name="twice_out", domain="test.quake"),
    ]
    return _graph_model(
        nodes, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [N, N])], extra_opsets=["test.quake"]
    )


def feeds() -> dict:
    # A dominant diagonal: Inverse is well conditioned before and after the Softmax.
    rng = np.random.default_rng(0)
    return {"X": (8 * np.eye(N) + 0.1 * rng.standard_normal((N, N))).astype(np.float32)}


def plain_run(path: Path, libraries=()) -> list:
    """The original through ONNX Runtime alone, with the libraries it needs."""
    from onnxruntime_extensions import get_library_path

    so = ort.SessionOptions()
    so.register_custom_ops_library(get_library_path())
    for lib in libraries:
        so.register_custom_ops_library(str(lib))
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds())


def decisions(report) -> list:
    return [(d.node, d.rule, d.replaced, d.reason) for d in report.decisions]


@pytest.mark.parametrize("where", ["before", "after", "subgraph"])
@pytest.mark.parametrize("fusions", [True, False])
def test_contrib_ops_are_registered_by_themselves(tmp_path, where, fusions):
    src, out = tmp_path / "m.onnx", tmp_path / "m.quake.onnx"
    onnx.save(contrib_model(where), str(src))
    _, inspected = quake_onnx.optimize(src, ort_fusions=fusions)
    _, report = quake_onnx.optimize(src, out, ort_fusions=fusions)
    assert decisions(inspected) == decisions(report)
    (decision,) = [d for d in report.decisions if d.node == "sm"]
    if where == "before" and not fusions:
        # onnx cannot infer through Inverse; only ORT's oracle states the type.
        assert not decision.replaced and decision.reason == "element type unknown"
        return
    assert decision.replaced, decision.reason
    assert [n.op_type for n in quake_nodes(onnx.load(str(out)))] == ["Softmax"]
    ref = plain_run(src)
    got = quake_onnx.InferenceSession(str(out)).run(None, feeds())
    # After the Softmax, Inverse scales its error by at most |P^-1|^2 (~1.1 here).
    np.testing.assert_allclose(got[0], ref[0], atol=SOFTMAX_ATOL * (2 if where == "after" else 1))
    for rest_got, rest_ref in zip(got[1:], ref[1:]):
        assert (rest_got == rest_ref).all()
    # check feeds generated inputs, not the dominant diagonal above: an Inverse
    # after the Softmax then inverts a nearly uniform (ill-conditioned) matrix,
    # which multiplies the Softmax's error (cosine 0.99989 measured at order 2).
    result = cli("check", src, "--min-cosine", "0.999" if where == "after" else "0.9999")
    assert result.exit_code == 0, result.stdout + result.stderr


def test_contrib_model_cli_commands(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(contrib_model("before"), str(src))
    result = cli("optimize", src, tmp_path / "m.exaq.onnx", "--softmax-method", "exaq", "--explain")
    assert result.exit_code == 0, result.stderr
    assert "replaced sm (Softmax, rule softmax)" in result.stdout
    np.savez(tmp_path / "x.npz", **feeds())
    result = cli("calibrate", tmp_path / "m.exaq.onnx", tmp_path / "cal.onnx", "--inputs", tmp_path / "x.npz")
    assert result.exit_code == 0, result.stderr
    (tmp_path / "zoo").mkdir()
    onnx.save(contrib_model("after"), str(tmp_path / "zoo" / "inverse.onnx"))
    result = cli("zoo", tmp_path / "zoo", "--runs", "2", "--warmup", "0")
    assert result.exit_code == 0, result.stdout + result.stderr


def test_another_library_named_on_the_command_line(tmp_path, test_op_library):
    src, out = tmp_path / "twice.onnx", tmp_path / "twice.quake.onnx"
    onnx.save(twice_model(), str(src))
    lib = ["--custom-ops-library", test_op_library]
    # Without it ONNX Runtime refuses the input itself: bad input, nothing written.
    assert_one_line_error(cli("optimize", src, out), 2, "the input model does not load in ONNX Runtime")
    assert_one_line_error(cli("optimize", src, out, "--no-ort-fusions"), 2, "the input model does not load")
    assert not out.exists()
    inspected = cli("inspect", src, *lib)
    result = cli("optimize", src, out, *lib, "--explain")
    assert result.exit_code == 0 and inspected.exit_code == 0, result.stderr + inspected.stderr
    assert "replaced" in result.stdout and "would replace" in inspected.stdout
    assert [n.op_type for n in quake_nodes(onnx.load(str(out)))] == ["Softmax"]
    ref = plain_run(src, [test_op_library])[0]
    got = quake_onnx.InferenceSession(out, custom_ops_libraries=[test_op_library]).run(None, feeds())[0]
    np.testing.assert_allclose(got, ref, atol=2 * SOFTMAX_ATOL)  # Twice doubles the Softmax's error
    result = cli("check", src, *lib, "--min-cosine", "0.9999")
    assert result.exit_code == 0, result.stdout + result.stderr
    (tmp_path / "zoo").mkdir()
    onnx.save(twice_model(), str(tmp_path / "zoo" / "twice.onnx"))
    result = cli("zoo", tmp_path / "zoo", *lib, "--runs", "2", "--warmup", "0")
    assert result.exit_code == 0, result.stdout + result.stderr
    # The Python API takes the same list.
    model, report = quake_onnx.optimize(src, custom_ops_libraries=[test_op_library])
    assert [d.replaced for d in report.decisions] == [True]


@pytest.mark.parametrize("command", ["optimize", "inspect", "check", "zoo", "calibrate"])
def test_bad_library_paths(tmp_path, command):
    src = tmp_path / "m.onnx"
    onnx.save(contrib_model("after"), str(src))
    (tmp_path / "text.so").write_text("not a library\n")
    for path, words in (
        (tmp_path / "missing.so", "does not exist"),
        (tmp_path, "is not a file"),
        (tmp_path / "text.so", "does not load"),
    ):
        args = {
            "optimize": [src, tmp_path / "o.onnx"],
            "inspect": [src],
            "check": [src],
            "zoo": [tmp_path],
            "calibrate": [src, tmp_path / "o.onnx"],
        }[command]
        result = cli(command, *args, "--custom-ops-library", path)
        assert_one_line_error(result, 2, words)
    assert not (tmp_path / "o.onnx").exists()


def test_session_options_serve_several_sessions(tmp_path):
    # quake_onnx.InferenceSession registers each library once per SessionOptions:
    # ORT refuses options holding a domain twice ("Domain already set in registry").
    out = tmp_path / "m.quake.onnx"
    quake_onnx.optimize(contrib_model("before"), out, ort_fusions=True)
    so = ort.SessionOptions()
    first = quake_onnx.InferenceSession(str(out), so).run(None, feeds())
    second = quake_onnx.InferenceSession(str(out), so).run(None, feeds())
    assert all((a == b).all() for a, b in zip(first, second))
    # Options with the library registered by hand (as for onnxruntime.InferenceSession): a clear error.
    by_hand = ort.SessionOptions()
    by_hand.register_custom_ops_library(quake_onnx.get_library_path())
    with pytest.raises(ValueError, match="registered by hand"):
        quake_onnx.InferenceSession(str(out), by_hand)
