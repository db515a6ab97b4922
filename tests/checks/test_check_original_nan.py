"""original_nan (58215f1) as review found it wanting: rows it excuses left out of
top-1/top-k, no excuse when the inputs hold a NaN or nothing else was compared."""

import json

import numpy as np
import onnx
from checktools import cli
from onnx import TensorProto, helper

from quake_onnx.check import compare as cmp


def test_rows_left_out_of_the_errors_are_left_out_of_top1_and_topk():
    # A padded batch's logits: row 0 NaN in ONNX Runtime, numbers in the
    # rewrite. The errors and the cosine leave row 0 out (original_nan), but
    # top-1/top-k still count it, argmax of an all-NaN row being 0: a
    # --min-top1-agreement check fails on the row the errors excuse (and an
    # all-zero rewritten row would "agree" by accident).
    ref = np.array([[np.nan, np.nan, np.nan], [0.1, 0.9, 0.0]])
    out = np.array([[0.2, 0.5, 0.3], [0.1, 0.9, 0.0]])
    m = cmp.compare("logits", ref, out, top_k=2, scores=True)
    assert (m.nonfinite_mismatch, m.original_nan, m.max_abs_error) == (0, 3, 0.0)
    assert m.top1_agreement == 1.0 and m.topk_agreement == 1.0


def test_an_output_nan_everywhere_in_the_original_is_not_perfect_agreement():
    # Nothing was compared, yet the result reads max abs 0 and cosine 1 and
    # the check passes whatever numbers the rewrite gives.
    ref = np.full((4, 8), np.nan)
    out = np.random.default_rng(0).standard_normal((4, 8))
    m = cmp.compare("y", ref, out, scores=False)
    assert not (m.max_abs_error == 0.0 and m.cosine == 1.0), m


def _softmax(path):
    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 128]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "g", info[:1], info[1:])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def _nan_dropping_softmax(path):
    # Softmax(IsNaN(x) ? 0 : x): what a kernel that clamps its input (max/min
    # on a NaN picks the other operand) does; docs/ops.md promises NaN there.
    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 128]) for n in ("x", "y")]
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    nodes = [
        helper.make_node("IsNaN", ["x"], ["nan"]),
        helper.make_node("Where", ["nan", "zero", "x"], ["clean"]),
        helper.make_node("Softmax", ["clean"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(nodes, "g", info[:1], info[1:], initializer=[zero])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def test_a_rewrite_that_loses_a_nan_of_the_inputs_still_fails(tmp_path):
    # original_nan excuses any number where the original has NaN, not only
    # the fully masked rows it was meant for: a NaN in the inputs that the
    # rewrite turns into numbers (a NaN-propagation bug the ops contract
    # rules out) used to fail check as a non-finite mismatch and now passes.
    x = np.random.default_rng(1).standard_normal((4, 128)).astype(np.float32)
    x[1, 5] = np.nan
    np.savez(tmp_path / "x.npz", x=x)
    r = cli(
        "check", _softmax(tmp_path / "m.onnx"), "--runs", "2", "--warmup", "1",
        "--optimized", _nan_dropping_softmax(tmp_path / "o.onnx"),
        "--inputs", tmp_path / "x.npz", "--json", tmp_path / "r.json",
    )  # fmt: skip
    result = json.loads((tmp_path / "r.json").read_text())
    # The inputs hold a NaN, so no number is excused where the original has NaN.
    assert (result["outputs"][0]["original_nan"], result["outputs"][0]["nonfinite_mismatch"]) == (0, 128)
    assert r.exit_code == 1, r.stdout + r.stderr


def _masked_classifier(path):
    # logits = Softmax(x) @ W + b, as a padded batch reaches a classifier head.
    rng = np.random.default_rng(0)
    w = helper.make_tensor("W", TensorProto.FLOAT, [128, 4], rng.standard_normal((128, 4)).astype(np.float32).ravel())
    b = helper.make_tensor("B", TensorProto.FLOAT, [4], [0.0, 1.0, 0.0, 0.0])
    nodes = [
        helper.make_node("Softmax", ["x"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "W"], ["h"]),
        helper.make_node("Add", ["h", "B"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 128])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [4, 4])],
        initializer=[w, b],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def test_a_fully_masked_row_passes_a_top1_threshold_too(tmp_path):
    # The case 58215f1 was made for (row 1 all -inf: NaN in ONNX Runtime, 0 in
    # com.quake), reaching a classifier head: the errors excuse row 1, but
    # top-1 counts it as a disagreement (argmax of the NaN row is 0, of the
    # rewrite's row argmax(B) = 1): 0.750 < 0.9, FAIL.
    x = np.random.default_rng(1).standard_normal((4, 128)).astype(np.float32)
    x[1] = -np.inf
    np.savez(tmp_path / "x.npz", x=x)
    r = cli(
        "check", _masked_classifier(tmp_path / "m.onnx"), "--runs", "2", "--warmup", "1", "--min-elements", "0",
        "--inputs", tmp_path / "x.npz", "--min-top1-agreement", "0.9", "--json", tmp_path / "r.json",
    )  # fmt: skip
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["outputs"][0]["original_nan"] == 4 and result["outputs"][0]["nonfinite_mismatch"] == 0
    assert r.exit_code == 0, r.stdout + r.stderr


def test_a_nan_of_the_inputs_that_both_runs_carry_passes(tmp_path):
    # Row 1 all NaN, one NaN in row 2: ONNX Runtime and the rewrite give NaN
    # in the same places, which is agreement; the errors cover the rest.
    x = np.random.default_rng(2).standard_normal((4, 128)).astype(np.float32)
    x[1] = np.nan
    x[2, 7] = np.nan
    np.savez(tmp_path / "x.npz", x=x)
    r = cli(
        "check", _softmax(tmp_path / "m.onnx"), "--runs", "2", "--warmup", "1", "--min-elements", "0",
        "--inputs", tmp_path / "x.npz", "--json", tmp_path / "r.json",
    )  # fmt: skip
    assert r.exit_code == 0, r.stdout + r.stderr
    (y,) = json.loads((tmp_path / "r.json").read_text())["outputs"]
    assert (y["nonfinite_mismatch"], y["original_nan"]) == (0, 0)
    assert 0 < y["max_abs_error"] < 1e-3 and y["cosine"] > 0.999


def test_an_output_nan_in_both_runs_everywhere_fails_as_nothing_compared(tmp_path):
    # Fresh-user run: all-inf inputs, every output element NaN in both runs,
    # and check read max abs 0, cosine 1.000000, PASS at --max-abs-error 1e-9.
    np.savez(tmp_path / "x.npz", x=np.full((4, 128), np.inf, np.float32))
    r = cli(
        "check", _softmax(tmp_path / "m.onnx"), "--runs", "2", "--warmup", "1", "--min-elements", "0",
        "--inputs", tmp_path / "x.npz", "--max-abs-error", "1e-9", "--json", tmp_path / "r.json",
    )  # fmt: skip
    (y,) = json.loads((tmp_path / "r.json").read_text())["outputs"]
    assert (y["nonfinite_mismatch"], y["compared"]) == (0, 0)
    assert r.exit_code == 1, r.stdout + r.stderr
    assert "nothing compared: output y is NaN in both runs" in " ".join(r.stdout.split() + r.stderr.split())


def test_the_same_infinity_in_both_runs_is_compared():
    ref = np.array([np.inf, -np.inf, np.nan, 1.0])
    assert cmp.compare("y", ref, ref.copy(), scores=False).compared == 3
    assert cmp.compare("y", ref[:3], ref[:3].copy(), scores=False).compared == 2
    assert cmp.compare("y", np.full(3, np.nan), np.full(3, np.nan), scores=False).compared == 0
    assert cmp.compare("y", np.array(["a"]), np.array(["a"]), scores=False).compared == 1


def test_string_outputs_that_differ_fail_and_do_not_crash(tmp_path):
    # Fresh-user run: Softmax -> Cast(to=STRING), whose strings differ after the
    # rewrite: max abs error "inf" (a string in the summary) was compared with
    # the threshold, "internal error (TypeError ...)", and zoo, which re-judges
    # at every S(t) threshold, wrote no report at all.
    info = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 128])]
    out = [helper.make_tensor_value_info("s", TensorProto.STRING, [4, 128])]
    nodes = [helper.make_node("Softmax", ["x"], ["p"], axis=-1), helper.make_node("Cast", ["p"], ["s"], to=8)]
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    graph = helper.make_graph(nodes, "g", info, out)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), zoo / "str.onnx")
    args = ("--runs", "1", "--warmup", "0", "--min-elements", "0")
    r = cli("check", zoo / "str.onnx", *args, "--max-abs-error", "0.01")
    assert r.exit_code == 1 and "max abs error inf > 0.01" in r.stdout + r.stderr, r.stdout + r.stderr
    r = cli("zoo", zoo, *args, "--json", tmp_path / "z.json")
    assert r.exit_code == 1 and "internal error" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert json.loads((tmp_path / "z.json").read_text())["models"][0]["status"] == "fail"
