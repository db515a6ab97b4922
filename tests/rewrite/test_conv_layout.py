"""Conv activations: the default keeps the ones ONNX Runtime runs in its NCHWc
layout (or fuses into the Conv) and says why; ort_level="all" lays the model
out with ORT first and replaces them.

The ORT-backed tests check the rule against what ORT really does: the reorders
in the graph it runs at ORT_ENABLE_ALL (they skip where ORT lays out nothing,
e.g. a CPU without MLAS NCHWc kernels)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import quake_onnx
from quake_onnx.optimize import OptimizeError
from quake_onnx.rewrite import rewrite_model
from quake_onnx.rewrite.layout import FUSION_REASON, NCHWC_REASON

from .builders import EXP_RTOL, GELU_ERF_ATOL, SIGMOID_ATOL, Graph, op_types, run, sample

C = 32  # a multiple of every NCHWc block size (8 with AVX2, 16 with AVX-512)
SHAPE = [1, C, 12, 12]
FEEDS = {"X": sample(SHAPE, scale=1.0)}


def conv(g: Graph, x: str, name: str, c_in: int = C, c_out: int = C) -> str:
    w = g.const((np.random.default_rng(len(g.inits)).standard_normal((c_out, c_in, 1, 1)) * 0.2), f"{name}_w")
    return g.node("Conv", [x, w], name=name, kernel_shape=[1, 1])


def silu(g: Graph, x: str, name: str = "act") -> str:
    return g.node("Mul", [x, g.node("Sigmoid", [x], name=f"{name}_sig")], name=name)


def conv_silu_conv() -> onnx.ModelProto:
    g = Graph()
    y = conv(g, silu(g, conv(g, "X", "c1")), "c2")
    return g.model({"X": SHAPE}, {y: SHAPE}, opset=17)


def count(model_or_path, what: str) -> int:
    model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(str(model_or_path))
    return sum(what in f"{n.domain}.{n.op_type}" for n in model.graph.node)


def ort_runtime(model: onnx.ModelProto, tmp_path, name: str) -> onnx.ModelProto:
    """The graph ORT runs at ORT_ENABLE_ALL (the library registered), as ORT saves it."""
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp_path / f"{name}.runtime.onnx")
    quake_onnx.InferenceSession(str(path), so)
    return onnx.load(so.optimized_model_filepath)


def reorders(model, tmp_path, name) -> int:
    runtime = ort_runtime(model, tmp_path, name)
    if not count(runtime, "nchwc."):
        pytest.skip("ONNX Runtime lays out no NCHWc on this CPU")
    return count(runtime, "Reorder")


# --- the default: what is kept and why -------------------------------------------------------


def test_conv_silu_conv_is_kept_with_the_reason():
    model = conv_silu_conv()
    out, report = rewrite_model(model)
    assert op_types(out) == op_types(model)
    assert [(d.rule, d.replaced, d.reason) for d in report.decisions] == [("silu", False, NCHWC_REASON)]


def test_without_the_check_the_silu_is_replaced_and_orts_reorders_grow(tmp_path):
    """What the check prevents, measured on ORT's own graph: the com.quake Silu
    between two convs costs a ReorderOutput and a ReorderInput."""
    model = conv_silu_conv()
    out, report = rewrite_model(model, keep_conv_layout=False)
    assert op_types(out) == ["Conv", "com.quake.Silu", "Conv"]
    assert reorders(out, tmp_path, "quake") == reorders(model, tmp_path, "orig") + 2


def test_sigmoid_straight_after_a_conv_is_kept_for_the_fusion():
    g = Graph()
    y = g.node("Sigmoid", [conv(g, "X", "c1")], name="gate")
    _, report = rewrite_model(g.model({"X": SHAPE}, {y: SHAPE}, opset=17))
    assert [(d.rule, d.replaced, d.reason) for d in report.decisions] == [("sigmoid", False, FUSION_REASON)]


def test_silu_through_relu_and_residual_add_is_kept():
    """The layout flows through Relu and a same-shape Add of two conv outputs."""
    g = Graph()
    a = g.node("Relu", [conv(g, "X", "c1")], name="relu")
    s = g.node("Add", [a, conv(g, "X", "c2")], name="res")
    y = conv(g, silu(g, s), "c3")
    _, report = rewrite_model(g.model({"X": SHAPE}, {y: SHAPE}, opset=17))
    assert [(d.replaced, d.reason) for d in report.decisions] == [(False, NCHWC_REASON)]


def test_gelu_on_a_conv_activation_is_kept():
    g = Graph()
    y = conv(g, g.node("Gelu", [conv(g, "X", "c1")], name="gelu"), "c2")
    _, report = rewrite_model(g.model({"X": SHAPE}, {y: SHAPE}, opset=20))
    assert [(d.rule, d.replaced, d.reason) for d in report.decisions] == [("gelu", False, NCHWC_REASON)]


def _replaced_without_extra_reorders(model, tmp_path, expected, rtol=0.0):
    out, report = rewrite_model(model)
    assert op_types(out) == expected, report.decisions
    assert reorders(out, tmp_path, "quake") == reorders(model, tmp_path, "orig")
    np.testing.assert_allclose(run(out, FEEDS)[0], run(model, FEEDS)[0], atol=0.05, rtol=rtol)


def test_silu_whose_output_leaves_the_layout_is_replaced(tmp_path):
    """Conv -> SiLU -> graph output: ORT reorders after the activation anyway, so the
    com.quake Silu costs no extra pass (its ReorderOutput just moves before it)."""
    g = Graph()
    y = silu(g, conv(g, "X", "c1"))
    _replaced_without_extra_reorders(g.model({"X": SHAPE}, {y: SHAPE}, opset=17), tmp_path, ["Conv", "com.quake.Silu"])


def test_silu_on_the_model_input_feeding_a_conv_is_replaced(tmp_path):
    """X -> SiLU -> Conv: the Conv's ReorderInput is there with or without the rewrite."""
    g = Graph()
    y = conv(g, silu(g, "X"), "c1")
    _replaced_without_extra_reorders(g.model({"X": SHAPE}, {y: SHAPE}, opset=17), tmp_path, ["com.quake.Silu", "Conv"])


def test_exp_between_convs_is_replaced(tmp_path):
    """ORT does not run Exp blocked: it reorders around it anyway."""
    g = Graph()
    y = conv(g, g.node("Exp", [conv(g, "X", "c1")], name="exp"), "c2")
    model = g.model({"X": SHAPE}, {y: SHAPE}, opset=17)
    _replaced_without_extra_reorders(model, tmp_path, ["Conv", "com.quake.Exp", "Conv"], rtol=EXP_RTOL)


def test_broadcasting_gate_mul_is_not_blocked():
    """A squeeze-excitation gate Mul([1,C,H,W], [1,C,1,1]) leaves the layout: the SiLU after it is replaced."""
    g = Graph()
    h = g.node("Relu", [conv(g, "X", "c1")], name="relu")
    gate = g.node("Sigmoid", [conv(g, g.node("GlobalAveragePool", [h], name="pool"), "se")], name="gate")
    s = g.node("Mul", [h, gate], name="se_mul")
    y = conv(g, silu(g, s), "c2")
    out, report = rewrite_model(g.model({"X": SHAPE}, {y: SHAPE}, opset=17))
    by_node = {d.node: (d.rule, d.replaced, d.reason) for d in report.decisions}
    assert by_node["gate"] == ("sigmoid", False, FUSION_REASON)
    assert by_node["act_sig"][:2] == ("silu", True)


def test_float16_conv_activation_is_replaced():
    """ORT's NCHWc layout is float32 only."""
    g = Graph(dtype=onnx.TensorProto.FLOAT16)
    y = g.node("Relu", [silu(g, conv(g, "X", "c1"))], name="relu")
    out, _ = rewrite_model(g.model({"X": SHAPE}, {y: SHAPE}, opset=17))
    assert "com.quake.Silu" in op_types(out)


def test_transformer_gelu_is_still_replaced():
    g = Graph()
    w = g.const(sample((64, 64), scale=0.1), "w")
    y = g.node("Gelu", [g.node("MatMul", ["X", w], name="mm")], name="gelu")
    out, report = rewrite_model(g.model({"X": [1, 8, 64]}, [y], opset=20))
    assert op_types(out) == ["MatMul", "com.quake.Gelu"]
    feeds = {"X": sample((1, 8, 64), scale=1.0)}
    np.testing.assert_allclose(
        run(out, feeds)[0], run(g.model({"X": [1, 8, 64]}, [y], opset=20), feeds)[0], atol=GELU_ERF_ATOL
    )


# --- optimize(): the default keeps ORT's layout, ort_level="all" replaces inside it ---------


def small_cnn() -> onnx.ModelProto:
    """Stem conv, two conv + SiLU stages, a squeeze-excitation gate, a residual Add."""
    g = Graph()
    x = silu(g, conv(g, "X", "stem"), "stem_act")
    h = silu(g, conv(g, x, "expand", C, 2 * C), "act1")
    gate = g.node("Sigmoid", [conv(g, g.node("GlobalAveragePool", [h], name="pool"), "se", 2 * C, 2 * C)], name="gate")
    h = g.node("Mul", [h, gate], name="se_mul")
    y = g.node("Add", [conv(g, h, "proj", 2 * C, C), x], name="out")
    return g.model({"X": SHAPE}, {y: SHAPE}, opset=17)


def test_optimize_default_leaves_the_cnn_as_ort_runs_it(tmp_path):
    model = small_cnn()
    out, report = quake_onnx.optimize(model, min_elements=0)
    assert not report.replaced
    # The SiLU feeding the squeeze-excitation Mul is no gated MLP: its gate broadcasts.
    glu = [d.reason for d in report.decisions if d.rule == "glu"]
    assert glu and all("com.quake Glu takes equal shapes" in r for r in glu)
    assert {d.reason for d in report.decisions if d.rule != "glu"} <= {NCHWC_REASON, FUSION_REASON}
    assert any(d.reason == NCHWC_REASON for d in report.decisions)
    assert reorders(out, tmp_path, "default") == reorders(model, tmp_path, "orig")


def test_optimize_ort_level_all_replaces_the_blocked_silus(tmp_path):
    model = small_cnn()
    path = tmp_path / "cnn.quake.onnx"
    out, report = quake_onnx.optimize(model, path, ort_level="all")
    laid_out = ort_runtime(model, tmp_path, "orig")
    if not count(laid_out, "nchwc."):
        pytest.skip("ONNX Runtime lays out no NCHWc on this CPU")
    assert count(out, "com.microsoft.nchwc.") > 0
    assert any("NCHWc" in w for w in report.warnings)
    silus = [n for n in out.graph.node if n.domain == "com.quake" and n.op_type == "Silu"]
    assert len(silus) == 2 and report.counts() == {"quick_gelu": 2}
    assert not any(n.op_type == "QuickGelu" for n in out.graph.node)
    # Loading it at ENABLE_ALL adds no reorders: as many as ORT's own layout of the original.
    runtime = ort_runtime(onnx.load(str(path)), tmp_path, "quake")
    assert count(runtime, "Reorder") == count(laid_out, "Reorder")
    assert count(runtime, "com.quake.Silu") == 2

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    got = quake_onnx.InferenceSession(str(path), so).run(None, FEEDS)[0]
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, FEEDS)[0]
    assert got.shape == want.shape
    # Two SiLUs of max error 1e-3 each, carried through 1x1 convs of weight ~0.2 * sqrt(C).
    np.testing.assert_allclose(got, want, atol=10 * SIGMOID_ATOL)
    assert np.abs(got - want).max() > 0  # the com.quake kernels really ran


def test_ort_level_all_needs_the_fusions():
    with pytest.raises(OptimizeError, match="fusions"):
        quake_onnx.optimize(small_cnn(), ort_fusions=False, ort_level="all")
    with pytest.raises(OptimizeError, match="ort_level"):
        quake_onnx.optimize(small_cnn(), ort_level="layout")
