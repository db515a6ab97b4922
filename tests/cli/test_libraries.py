"""Models that need another custom-op library: onnxruntime-extensions' (the
ai.onnx.contrib domain, registered by itself) and any other one, named with
--custom-ops-library (here tests/oplib's test.quake.Twice, built by CMake).
Every session the tool opens gets them: optimize's oracle and verification,
inspect, check, zoo, calibrate and quake_onnx.InferenceSession; inspect and
optimize agree on every decision."""

from __future__ import annotations

import re
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


def exaq_model() -> onnx.ModelProto:
    """One com.quake Softmax of method exaq, clip not fixed: what calibrate takes."""
    node = helper.make_node("Softmax", ["X"], ["Y"], name="sm", domain="com.quake", method="exaq", bits=3, order=2)
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [N, N])
    return _graph_model([node], [y], extra_opsets=["com.quake"])


BAD_OVERRIDES = {"missing": "does not exist", "folder": "is not a file", "text": "does not load"}


@pytest.mark.parametrize("case", sorted(BAD_OVERRIDES))
@pytest.mark.parametrize(
    "command", ["lib-path", "optimize", "inspect", "check", "check-optimized", "zoo", "tune", "calibrate", "demo"]
)
def test_quake_onnx_library_that_does_not_load(tmp_path, monkeypatch, command, case):
    # The variable names the library every command needs: a path that is no
    # library is the user's input (exit 2), named in the one line, not a
    # "com.quake:Softmax is not a registered function/op" from later on.
    src, quake, exaq = tmp_path / "m.onnx", tmp_path / "m.quake.onnx", tmp_path / "m.exaq.onnx"
    (tmp_path / "zoo").mkdir()
    onnx.save(contrib_model("after"), str(src))
    onnx.save(contrib_model("after"), str(tmp_path / "zoo" / "m.onnx"))
    quake_onnx.optimize(src, quake)
    onnx.save(exaq_model(), str(exaq))
    np.savez(tmp_path / "x.npz", **feeds())
    bad = {"missing": tmp_path / "nope.so", "folder": tmp_path / "zoo", "text": tmp_path / "text.so"}[case]
    (tmp_path / "text.so").write_text("not a library\n")
    monkeypatch.setenv("QUAKE_ONNX_LIBRARY", str(bad))
    out = tmp_path / "out.onnx"
    args = {
        "lib-path": ["lib-path"],
        "optimize": ["optimize", src, out],
        "inspect": ["inspect", src],
        "check": ["check", src],
        "check-optimized": ["check", src, "--optimized", quake],
        "zoo": ["zoo", tmp_path / "zoo"],
        "tune": ["tune", src, out],
        "calibrate": ["calibrate", exaq, out, "--inputs", tmp_path / "x.npz"],
        "demo": ["demo", "--runs", "1"],
    }[command]
    if command == "lib-path" and case == "text":
        pytest.skip("lib-path prints the path it would register; it does not load the library")
    line = assert_one_line_error(cli(*args), 2, f"QUAKE_ONNX_LIBRARY={bad}")
    assert BAD_OVERRIDES[case] in line
    assert not out.exists()


def test_an_installation_without_the_library_says_so(tmp_path, monkeypatch):
    # A source checkout whose library was never built: optimize cannot check
    # what it wrote, and says what to reinstall instead of ORT's "is not a
    # registered function/op".
    def absent():
        raise FileNotFoundError("libquake_ops.so is not part of the quake_onnx in here; reinstall with `pip install .`")

    monkeypatch.delenv("QUAKE_ONNX_LIBRARY", raising=False)
    monkeypatch.setattr("quake_onnx._library.get_library_path", absent)
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(contrib_model("after"), str(src))
    # Exit 2, as lib-path gives for the same installation: the user's to fix.
    line = assert_one_line_error(cli("optimize", src, out), 2, "needs the com.quake library")
    assert "pip install ." in line and not out.exists()


def test_python_api_with_a_quake_onnx_library_that_names_no_file(tmp_path, monkeypatch):
    src, quake = tmp_path / "m.onnx", tmp_path / "m.quake.onnx"
    onnx.save(contrib_model("after"), str(src))
    quake_onnx.optimize(src, quake)
    monkeypatch.setenv("QUAKE_ONNX_LIBRARY", str(tmp_path / "nope.so"))
    from quake_onnx.sessions import LibraryError

    message = f"QUAKE_ONNX_LIBRARY={tmp_path / 'nope.so'} does not exist"
    with pytest.raises(LibraryError, match="^" + re.escape(message) + "$") as info:
        quake_onnx.InferenceSession(quake)
    assert info.value.exit_code == 2
    with pytest.raises(LibraryError, match=re.escape(message)):
        quake_onnx.optimize(src, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        quake_onnx.get_library_path()


@pytest.mark.parametrize("command", ["optimize", "check", "zoo", "tune"])
def test_refused_quake_isa_is_named_as_such(tmp_path, monkeypatch, command):
    # The library is fine, the variable is not: the line says which, not "does not load".
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(contrib_model("after"), str(src))
    monkeypatch.setenv("QUAKE_ISA", "mmx")
    args = {"check": [src], "zoo": [tmp_path]}.get(command, [src, out])
    line = assert_one_line_error(cli(command, *args), 2, "QUAKE_ISA='mmx' is not one of auto, scalar")
    assert "does not load" not in line
    assert not out.exists()
