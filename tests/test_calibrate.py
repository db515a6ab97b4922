"""optimize(..., softmax_method="exaq", bits=...) and `quake-onnx calibrate`:
which nodes become exaq, what the report says, and that the calibrated clip
is the formula's C at the measured sigma (synthetic data of known sigma)."""

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent / "cli"))

from clitools import assert_one_line_error, cli  # noqa: E402

import quake_onnx  # noqa: E402
from quake_onnx import reference  # noqa: E402
from quake_onnx.calibrate import CalibrateError, calibrate  # noqa: E402
from quake_onnx.optimize import OptimizeError, optimize  # noqa: E402

N = 256  # softmax row length of the synthetic models


def attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def softmax_model(opset=17, scale=1.0, extra_quake=False):
    """X [R, N] -> Mul(scale) -> Softmax (named "sm"); extra_quake adds a
    com.quake Softmax of method quake that must stay as it is."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["R", N])
    nodes = [
        helper.make_node("Mul", ["X", "scale"], ["s"], name="mul"),
        helper.make_node("Softmax", ["s"], ["Y"], axis=-1, name="sm"),
    ]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)]
    opsets = [helper.make_opsetid("", opset)]
    if extra_quake:
        nodes.append(helper.make_node("Softmax", ["X"], ["Z"], name="mine", domain="com.quake", method="quake"))
        outputs.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT, None))
        opsets.append(helper.make_opsetid("com.quake", 1))
    g = helper.make_graph(nodes, "g", [x], outputs, [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])])
    m = helper.make_model(g, opset_imports=opsets)
    m.ir_version = 8
    return m


def quake_softmaxes(model):
    return [n for n in model.graph.node if n.domain == "com.quake" and n.op_type == "Softmax"]


@pytest.mark.parametrize("bits", [2, 3, 8])
def test_optimize_makes_exaq_nodes(bits):
    model, report = optimize(softmax_model(extra_quake=True), softmax_method="exaq", bits=bits)
    by_name = {n.name: attrs(n) for n in quake_softmaxes(model)}
    mine = by_name.pop("mine")
    assert mine["method"] == b"quake" and "bits" not in mine  # already com.quake: untouched
    (made,) = by_name.values()
    assert made["method"] == b"exaq" and made["bits"] == bits and made["clip"] == 0.0
    (decision,) = [d for d in report.decisions if d.node == "sm"]
    assert decision.replaced and f"exaq, {bits} bits" in decision.reason


def test_optimize_default_and_skip_nodes():
    model, _ = optimize(softmax_model())
    assert attrs(quake_softmaxes(model)[0]).get("method", b"quake") == b"quake"
    model, report = optimize(softmax_model(), softmax_method="exaq", skip_nodes=["sm"])
    assert not quake_softmaxes(model)
    assert not [d for d in report.decisions if d.node == "sm"][0].replaced


def test_optimize_pre_opset_13_softmax_becomes_exaq_too():
    # opset 11 Softmax(axis=1) on [R, N] is the last axis: one node; on 3-D input
    # the rule flattens around com.quake Softmax, which must be exaq as well.
    model, _ = optimize(softmax_model(opset=11), softmax_method="exaq", bits=4)
    (node,) = quake_softmaxes(model)
    assert attrs(node)["method"] == b"exaq" and attrs(node)["bits"] == 4


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"softmax_method": "fast"}, "softmax_method"),
        ({"bits": 1}, "bits"),
        ({"bits": 9}, "bits"),
        ({"softmax_method": "exaq", "bits": 3.0}, "bits"),
    ],
)
def test_optimize_bad_options(kwargs, needle):
    with pytest.raises(OptimizeError, match=needle):
        optimize(softmax_model(), **kwargs)


def gaussian_feeds(sigma, runs=3, rows=64, seed=0):
    rng = np.random.default_rng(seed)
    return [{"X": (rng.standard_normal((rows, N)) * sigma).astype(np.float32)} for _ in range(runs)]


def expected_sigma(sigma):
    # Mean of the ddof-0 sample standard deviation of N normal values.
    return sigma * np.sqrt((N - 1) / N) * (1 - 1 / (4 * (N - 1)))


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
def test_calibrated_clip_matches_the_formula(bits, sigma):
    # The Mul before the Softmax doubles sigma: calibration must measure the
    # Softmax's input, not the graph input.
    exaq_model, _ = optimize(softmax_model(scale=2.0), softmax_method="exaq", bits=bits)
    calibrated, (result,) = calibrate(exaq_model, gaussian_feeds(sigma))
    want = float(reference.exaq_clip(bits, expected_sigma(2 * sigma)))
    assert result.written and result.rows == 3 * 64
    assert result.sigma == pytest.approx(expected_sigma(2 * sigma), rel=0.01)
    assert result.clip == pytest.approx(want, rel=0.01)
    (node,) = quake_softmaxes(calibrated)
    assert attrs(node)["clip"] == pytest.approx(result.clip, rel=1e-6) and attrs(node)["clip"] < 0
    # The calibrated model runs the fixed clip: the definition with that C.
    x = gaussian_feeds(sigma, runs=1, seed=9)[0]["X"]
    y = quake_onnx.InferenceSession(calibrated.SerializeToString()).run(None, {"X": x})[0]
    ref = reference.softmax_exaq(2 * x.astype(np.float64), -1, bits, attrs(node)["clip"])
    assert np.abs(y - ref).max() < 0.05 / 2**bits + 1e-6  # a rare code tie aside, the same values


def test_calibrate_softmax_on_a_graph_input_and_recalibrate():
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["R", N])
    node = helper.make_node("Softmax", ["X"], ["Y"], name="q", domain="com.quake", method="exaq", bits=3, clip=-1.5)
    g = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.quake", 1)])
    m.ir_version = 8
    _, (kept,) = calibrate(m, gaussian_feeds(1.0))
    assert not kept.written and kept.clip == -1.5  # already fixed: left alone
    _, (redone,) = calibrate(m, gaussian_feeds(1.0), recalibrate=True)
    assert redone.written and redone.clip == pytest.approx(reference.exaq_clip(3, expected_sigma(1.0)), rel=0.01)


def test_calibrate_ignores_masked_elements():
    # Causal -inf masks are not data: sigma is over the live elements only.
    feeds = gaussian_feeds(1.0, runs=1, rows=N)
    feeds[0]["X"][np.triu(np.ones((N, N), bool), 1)] = -np.inf
    exaq_model, _ = optimize(softmax_model(), softmax_method="exaq", bits=3)
    _, (result,) = calibrate(exaq_model, feeds)
    sigma, _ = reference.exaq_row_stats(feeds[0]["X"])
    assert np.isfinite(result.sigma) and result.sigma == pytest.approx(np.nanmean(sigma), rel=1e-9)


def test_calibrate_refuses_models_without_exaq_nodes():
    with pytest.raises(CalibrateError, match="exaq"):
        calibrate(softmax_model(), gaussian_feeds(1.0))


def test_a_failed_run_keeps_onnx_runtimes_explanation():
    # ORT says which axis is wrong on the lines after the first: the one-line
    # reason keeps them.
    exaq_model, _ = optimize(softmax_model(), softmax_method="exaq", bits=3)
    with pytest.raises(CalibrateError) as e:
        calibrate(exaq_model, [{"X": np.zeros((4, 100), np.float32)}])
    assert "\n" not in str(e.value)
    assert "Got invalid dimensions for input: X for the following indices; index: 1 Got: 100 Expected: 256" in str(
        e.value
    )


def test_cli_optimize_then_calibrate(tmp_path):
    src, exaq_path, out = tmp_path / "m.onnx", tmp_path / "m.exaq.onnx", tmp_path / "m.cal.onnx"
    onnx.save(softmax_model(), src)
    r = cli("optimize", src, exaq_path, "--softmax-method", "exaq", "--bits", "4", "--explain")
    assert r.exit_code == 0, r.stderr
    assert "exaq, 4 bits" in r.stdout
    samples = []
    for i, feed in enumerate(gaussian_feeds(1.0, runs=2)):
        samples.append(tmp_path / f"s{i}.npz")
        np.savez(samples[-1], **feed)
    r = cli("calibrate", exaq_path, out, "--inputs", samples[0], "--inputs", samples[1])
    assert r.exit_code == 0, r.stderr
    assert "4 bits, sigma" in r.stdout and "128 rows" in r.stdout
    (node,) = quake_softmaxes(onnx.load(out))
    assert attrs(node)["clip"] == pytest.approx(reference.exaq_clip(4, expected_sigma(1.0)), rel=0.01)


def test_cli_errors(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(softmax_model(), src)
    assert_one_line_error(cli("optimize", src, tmp_path / "o.onnx", "--softmax-method", "fast"), 2, "softmax-method")
    assert_one_line_error(
        cli("optimize", src, tmp_path / "o.onnx", "--softmax-method", "exaq", "--bits", "9"), 2, "bits"
    )
    assert_one_line_error(cli("calibrate", src, tmp_path / "o.onnx"), 2, "exaq")
    # A refused OUT is the only line: it came after the warning about generated inputs.
    exaq_path = tmp_path / "m.exaq.onnx"
    assert cli("optimize", src, exaq_path, "--softmax-method", "exaq").exit_code == 0
    assert_one_line_error(cli("calibrate", exaq_path, exaq_path), 2, "is the input model")
    assert_one_line_error(cli("calibrate", exaq_path, tmp_path / "no" / "o.onnx"), 2, "does not exist")


@pytest.mark.parametrize(
    "inputs, needle",
    [
        ({"X": np.ones((2, 8), np.float32)}, "a list of feeds"),
        ("x.npz", "a list of feeds"),
        ([np.ones(3)], "feed 1 is a ndarray"),
    ],
)
def test_calibrate_refuses_inputs_that_are_not_a_list_of_feeds(inputs, needle):
    # Fresh-user run: a dict or an .npz path in place of a list of feeds gave
    # "run 1 failed: dictionary update sequence element #0 ...".
    exaq_model, _ = optimize(softmax_model(), softmax_method="exaq", bits=4)
    with pytest.raises(CalibrateError, match=needle) as info:
        calibrate(exaq_model, inputs)
    assert info.value.exit_code == 2
