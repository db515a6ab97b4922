"""act(gate) * up -> com.quake Glu: SwiGLU (Llama), GeGLU (Gemma, T5 v1.1), the halves of one
MatMul (Phi-3), ORT's fused activations; refusals; never SiLU's own x * sigmoid(x)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import helper

import quake_onnx
from quake_onnx.rewrite import rewrite_model

from . import gelu_forms
from .builders import F16, F32, F64, NP, Graph, assert_untouched, check_rewrite, decision, op_types, run

MS = "com.microsoft"
HIDDEN, INTER = 32, 88
X_SHAPE = [2, 8, HIDDEN]
# ops.md budgets of the gate at order 2 (absolute); a Glu element is off by at most that times |up|.
GATE = {"silu": 1e-3, "gelu_tanh": 2e-3, "gelu": 2e-3 + 4.8e-4}  # gelu: against the erf form


def weights(rows, cols, seed):
    return np.random.default_rng(seed).standard_normal((rows, cols)) / math.sqrt(rows)


def feeds(dtype=F32, seed=0):
    return {"X": (np.random.default_rng(seed).standard_normal(X_SHAPE) * 2).astype(NP[dtype])}


def project(g: Graph, x: str, cols: int, seed: int, name: str) -> str:
    return g.node("MatMul", [x, g.const(weights(HIDDEN, cols, seed), f"W_{name}")], name=name)


# --- activations as exporters write them, each (Graph, gate tensor) -> act(gate) ------------------


def silu(g, x, swap=False):
    s = g.node("Sigmoid", [x], name="sig")
    return g.node("Mul", [s, x] if swap else [x, s], name="silu_mul")


def swish_form(g, x, beta=1.702):
    s = g.node("Sigmoid", [g.node("Mul", [x, g.const(beta, "beta")], name="beta_mul")], name="sig")
    return g.node("Mul", [x, s], name="silu_mul")


def quick_gelu(g, x):
    return g.node("QuickGelu", [x], name="qg", domain=MS, alpha=1.702)


def erf_gelu(g, x):
    return gelu_forms.erf_gelu(g, x)


def tanh_gelu(g, x):
    return gelu_forms.tanh_gelu(g, x, tail="(0.5*x)*p")


def gelu20(approximate):
    return lambda g, x: g.node("Gelu", [x], name="gelu", approximate=approximate)


def ms_gelu(op):
    return lambda g, x: g.node(op, [x], name="msgelu", domain=MS)


# name: (builder, com.quake Glu activation, alpha, opset, the activation's anchor)
ACTIVATIONS = {
    "silu": (silu, "silu", 1.0, 17, "sig"),
    "silu_swapped": (lambda g, x: silu(g, x, swap=True), "silu", 1.0, 17, "sig"),
    "swish_form": (swish_form, "silu", 1.702, 17, "sig"),
    "swish24": (lambda g, x: g.node("Swish", [x], name="swish", alpha=1.5), "silu", 1.5, 24, "swish"),
    "quick_gelu": (quick_gelu, "silu", 1.702, 17, "qg"),
    "erf_gelu": (erf_gelu, "gelu", None, 17, "erf"),
    "tanh_gelu": (tanh_gelu, "gelu_tanh", None, 17, "tanh"),
    "gelu20_none": (gelu20("none"), "gelu", None, 20, "gelu"),
    "gelu20_tanh": (gelu20("tanh"), "gelu_tanh", None, 20, "gelu"),
    "ms_gelu": (ms_gelu("Gelu"), "gelu", None, 17, "msgelu"),
    "ms_fast_gelu": (ms_gelu("FastGelu"), "gelu_tanh", None, 17, "msgelu"),
}


def model_of(g: Graph, outputs: dict, opset: int):
    return g.model({"X": X_SHAPE}, outputs, opset=opset, extra_opsets=[(MS, 1)])


def llama_mlp(act, dtype=F32, up_first=False):
    """down(act(gate(x)) * up(x)), Llama's MLP (SwiGLU with silu; GeGLU with a GELU)."""
    build, _, _, opset, _ = ACTIVATIONS[act]
    g = Graph(dtype)
    gate = project(g, "X", INTER, 1, "gate_proj")
    up = project(g, "X", INTER, 2, "up_proj")
    a = build(g, gate)
    h = g.node("Mul", [up, a] if up_first else [a, up], name="gated")
    y = g.node("MatMul", [h, g.const(weights(INTER, HIDDEN, 3), "W_down")], name="down_proj")
    return model_of(g, {y: X_SHAPE}, opset)


def down_atol(act, x):
    """Output bound of the MLP: gate bound * max|up| * the largest column sum of |W_down|."""
    up = np.abs(x.astype(np.float64) @ weights(HIDDEN, INTER, 2)).max()
    return GATE[ACTIVATIONS[act][1]] * up * np.abs(weights(INTER, HIDDEN, 3)).sum(axis=0).max()


def glu_node(model):
    (node,) = [n for n in model.graph.node if n.op_type == "Glu"]
    return node, {a.name: helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_gated_mlp_every_activation(act):
    _, activation, alpha, opset, anchor = ACTIVATIONS[act]
    x = feeds()
    out, report = check_rewrite(
        llama_mlp(act), ["MatMul", "MatMul", "com.quake.Glu", "MatMul"], x, atol=down_atol(act, x["X"])
    )
    node, attrs = glu_node(out)
    assert attrs["activation"].decode() == activation and attrs["order"] == 2
    assert list(node.input) == ["gate_proj_out", "up_proj_out"] and list(node.output) == ["gated_out"]
    if alpha is None:
        assert "alpha" not in attrs
    else:
        assert attrs["alpha"] == pytest.approx(alpha)
    d = decision(report, "glu")
    assert d.replaced and d.node == anchor and "gate and up" in d.reason, d
    # The activation rules never saw it: their pattern went whole.
    assert [x.rule for x in report.decisions] == ["glu"]


@pytest.mark.parametrize("up_first", [False, True])
@pytest.mark.parametrize("dtype", [F32, F16])
def test_llama_mlp(dtype, up_first):
    x = feeds(dtype)
    check_rewrite(
        llama_mlp("silu", dtype, up_first),
        ["MatMul", "MatMul", "com.quake.Glu", "MatMul"],
        x,
        atol=down_atol("silu", x["X"]) + (3e-3 if dtype == F16 else 0.0),
        rtol=2e-3 if dtype == F16 else 0,
    )


@pytest.mark.parametrize("order", [1, 3])
def test_order_reaches_the_node(order):
    out, _ = rewrite_model(llama_mlp("silu"), order=order)
    assert glu_node(out)[1]["order"] == order


@pytest.mark.parametrize("act", ["tanh_gelu", "gelu20_tanh", "erf_gelu"])
def test_geglu_gemma_t5(act):
    # Gemma (gelu_pytorch_tanh) and T5 v1.1 (gelu_new) gate with a GELU: GeGLU.
    x = feeds()
    check_rewrite(llama_mlp(act), ["MatMul", "MatMul", "com.quake.Glu", "MatMul"], x, atol=down_atol(act, x["X"]))


# --- the halves form: one MatMul, its output cut in two (Phi-3's gate_up_proj) ------------------


def phi3_mlp(cut="split13", act="silu", dtype=F32, reverse=False, extra_reader=False):
    build, _, _, opset, _ = ACTIVATIONS[act]
    g = Graph(dtype)
    h = project(g, "X", 2 * INTER, 4, "gate_up_proj")
    if cut == "split13":  # sizes as an input (opset 13+)
        g.node(
            "Split",
            [h, g.const([INTER, INTER], "sizes", dtype=np.int64)],
            name="split",
            outputs=["first", "second"],
            axis=-1,
        )
        opset = max(opset, 13)
    elif cut == "split18":  # num_outputs (opset 18+)
        g.node("Split", [h], name="split", outputs=["first", "second"], axis=2, num_outputs=2)
        opset = max(opset, 18)
    else:  # two Slices of the last axis
        g.node(
            "Slice",
            [
                h,
                g.const([0], "s0", dtype=np.int64),
                g.const([INTER], "e0", dtype=np.int64),
                g.const([-1], "ax", dtype=np.int64),
            ],
            name="slice_gate",
            outputs=["first"],
        )
        g.node(
            "Slice",
            [
                h,
                g.const([INTER], "s1", dtype=np.int64),
                g.const([2**62], "e1", dtype=np.int64),
                g.const([2], "ax2", dtype=np.int64),
                g.const([1], "st", dtype=np.int64),
            ],
            name="slice_up",
            outputs=["second"],
        )
    gate, up = ("second", "first") if reverse else ("first", "second")
    hidden = g.node("Mul", [build(g, gate), up], name="gated")
    y = g.node("MatMul", [hidden, g.const(weights(INTER, HIDDEN, 3), "W_down")], name="down_proj")
    outputs = {y: X_SHAPE}
    if extra_reader:
        outputs[up] = X_SHAPE[:2] + [INTER]
    return model_of(g, outputs, opset)


def halves_atol(act, x, reverse=False):
    h = x.astype(np.float64) @ weights(HIDDEN, 2 * INTER, 4)
    up = np.abs(h[..., :INTER] if reverse else h[..., INTER:]).max()
    return GATE[ACTIVATIONS[act][1]] * up * np.abs(weights(INTER, HIDDEN, 3)).sum(axis=0).max()


@pytest.mark.parametrize("act", ["silu", "quick_gelu", "tanh_gelu", "erf_gelu", "gelu20_none"])
@pytest.mark.parametrize("cut", ["split13", "split18", "slices"])
def test_phi3_halves(cut, act):
    x = feeds()
    out, report = check_rewrite(
        phi3_mlp(cut, act), ["MatMul", "com.quake.Glu", "MatMul"], x, atol=halves_atol(act, x["X"])
    )
    node, _ = glu_node(out)
    assert list(node.input) == ["gate_up_proj_out"]  # A only: act(first half) * second half
    assert "halves of one tensor" in decision(report, "glu").reason


def torch_chunk_mlp(size=2 * INTER):
    """Phi-3's `gate, up = gate_up_proj(x).chunk(2, dim=-1)` as torch.onnx (opset 17) writes it
    with dynamic batch and sequence: the Slice bounds computed from Shape(h)[-1],
    chunk = (size + 1) / 2, Slices [0, chunk) and [chunk, 2 chunk) of axis -1."""
    g = Graph()
    h = g.node("MatMul", ["X", g.const(weights(HIDDEN, size, 4), "W_gate_up")], name="gate_up_proj")
    last = g.node(
        "Gather", [g.node("Shape", [h], name="shape"), g.const([-1], "minus1", dtype=np.int64)], name="gather", axis=0
    )
    chunk = g.node(
        "Div",
        [g.node("Add", [last, g.const([1], "one", dtype=np.int64)], name="add1"), g.const([2], "two", dtype=np.int64)],
        name="div2",
    )
    end0 = g.node("Mul", [chunk, g.const([1], "k1", dtype=np.int64)], name="mul1")
    end1 = g.node("Mul", [chunk, g.const([2], "k2", dtype=np.int64)], name="mul2")
    gate = g.node("Slice", [h, g.const([0], "zero", dtype=np.int64), end0, "minus1"], name="slice_gate")
    up = g.node("Slice", [h, end0, end1, "minus1"], name="slice_up")
    hidden = g.node("Mul", [up, silu(g, gate)], name="gated")
    y = g.node("MatMul", [hidden, g.const(weights(size // 2, HIDDEN, 3), "W_down")], name="down_proj")
    return g.model({"X": ["batch", "seq", HIDDEN]}, {y: ["batch", "seq", HIDDEN]}, opset=17)


def test_torch_chunk_export_is_the_halves_form():
    # The bounds are evaluated from the static last dimension; the nodes computing them go too.
    x = feeds()
    h = x["X"].astype(np.float64) @ weights(HIDDEN, 2 * INTER, 4)
    atol = GATE["silu"] * np.abs(h[..., INTER:]).max() * np.abs(weights(INTER, HIDDEN, 3)).sum(axis=0).max()
    out, report = check_rewrite(torch_chunk_mlp(), ["MatMul", "com.quake.Glu", "MatMul"], x, atol=atol)
    assert list(glu_node(out)[0].input) == ["gate_up_proj_out"]
    assert not out.graph.initializer or all(i.name.startswith("W_") for i in out.graph.initializer)


def test_torch_chunk_of_an_odd_axis_is_refused():
    # chunk(2) of 175: 88 + 87, which the Mul cannot even multiply; said as unequal halves.
    assert_untouched(
        torch_chunk_mlp(2 * INTER - 1),
        "glu",
        "cut the last axis into 88 + 87, not two equal halves",
        ops=frozenset({"glu"}),
    )


def test_phi3_float16():
    x = feeds(F16)
    check_rewrite(
        phi3_mlp("split13", "silu", F16),
        ["MatMul", "com.quake.Glu", "MatMul"],
        x,
        atol=halves_atol("silu", x["X"]) + 3e-3,
        rtol=2e-3,
    )


def test_halves_in_the_other_order_keep_the_split():
    # act(second) * first: no halves form of the contract, but a gate and an up.
    x = feeds()
    out, _ = check_rewrite(
        phi3_mlp("split13", reverse=True),
        ["MatMul", "Split", "com.quake.Glu", "MatMul"],
        x,
        atol=halves_atol("silu", x["X"], reverse=True),
    )
    assert list(glu_node(out)[0].input) == ["second", "first"]


def test_a_half_read_elsewhere_keeps_the_split():
    x = feeds()
    check_rewrite(
        phi3_mlp("split13", extra_reader=True),
        ["MatMul", "Split", "com.quake.Glu", "MatMul"],
        x,
        atol=halves_atol("silu", x["X"]),
    )


def test_split_of_another_axis_is_a_gate_and_an_up():
    g = Graph()
    h = project(g, "X", INTER, 4, "proj")
    g.node("Split", [h, g.const([4, 4], "sizes", dtype=np.int64)], name="split", outputs=["first", "second"], axis=1)
    y = g.node("Mul", [silu(g, "first"), "second"], name="gated")
    model = model_of(g, {y: [2, 4, INTER]}, 17)
    out, report = check_rewrite(model, ["MatMul", "Split", "com.quake.Glu"], feeds(), atol=1e-3 * 20)
    assert "gate and up" in decision(report, "glu").reason


def test_unequal_split_is_refused():
    # [1, 175]: the Mul broadcasts the 1-wide part; no halves, no equal shapes.
    g = Graph()
    h = project(g, "X", 2 * INTER, 4, "proj")
    g.node(
        "Split",
        [h, g.const([1, 2 * INTER - 1], "sizes", dtype=np.int64)],
        name="split",
        outputs=["first", "second"],
        axis=-1,
    )
    y = g.node("Mul", [silu(g, "first"), "second"], name="gated")
    model = model_of(g, {y: X_SHAPE[:2] + [2 * INTER - 1]}, 17)
    assert_untouched(model, "glu", "cuts the last axis into 1 + 175, not two equal halves", ops=frozenset({"glu"}))
    out, report = rewrite_model(model)
    assert op_types(out) == ["MatMul", "Split", "com.quake.Silu", "Mul"]  # left to the SiLU rule


def test_unequal_slices_are_refused():
    g = Graph()
    h = project(g, "X", 2 * INTER, 4, "proj")
    g.node(
        "Slice",
        [
            h,
            g.const([0], "s0", dtype=np.int64),
            g.const([1], "e0", dtype=np.int64),
            g.const([-1], "ax", dtype=np.int64),
        ],
        name="sl0",
        outputs=["first"],
    )
    g.node(
        "Slice",
        [
            h,
            g.const([1], "s1", dtype=np.int64),
            g.const([2 * INTER], "e1", dtype=np.int64),
            g.const([-1], "ax1", dtype=np.int64),
        ],
        name="sl1",
        outputs=["second"],
    )
    y = g.node("Mul", [silu(g, "first"), "second"], name="gated")
    model = model_of(g, {y: X_SHAPE[:2] + [2 * INTER - 1]}, 17)
    assert_untouched(model, "glu", "cut the last axis into 1 + 175, not two equal halves", ops=frozenset({"glu"}))


# --- ORT's fused activations with a bias ------------------------------------------------------


@pytest.mark.parametrize("op,activation", [("BiasGelu", "gelu"), ("FastGelu", "gelu_tanh")])
def test_bias_gelu_becomes_add_and_glu(op, activation):
    g = Graph()
    gate = project(g, "X", INTER, 1, "gate_proj")
    up = project(g, "X", INTER, 2, "up_proj")
    bias = g.const(np.random.default_rng(7).standard_normal(INTER) * 0.5, "bias")
    a = g.node(op, [gate, bias], name="bg", domain=MS)
    y = g.node("Mul", [a, up], name="gated")
    model = model_of(g, {y: X_SHAPE[:2] + [INTER]}, 17)
    x = feeds()
    up_max = np.abs(x["X"].astype(np.float64) @ weights(HIDDEN, INTER, 2)).max()
    out, report = check_rewrite(model, ["MatMul", "MatMul", "Add", "com.quake.Glu"], x, atol=GATE[activation] * up_max)
    add = next(n for n in out.graph.node if n.op_type == "Add")
    assert list(add.input) == ["gate_proj_out", "bias"]
    assert list(glu_node(out)[0].input) == [add.output[0], "up_proj_out"]
    assert "bias Add kept" in decision(report, "glu").reason


def test_bias_add_before_a_decomposed_gelu_stays():
    # What the GELU rules would fold into com.quake Gelu's B stays an Add: Glu has no bias.
    g = Graph()
    gate = g.node(
        "Add", [project(g, "X", INTER, 1, "gate_proj"), g.const(np.full(INTER, 0.3), "bias")], name="bias_add"
    )
    up = project(g, "X", INTER, 2, "up_proj")
    y = g.node("Mul", [erf_gelu(g, gate), up], name="gated")
    model = model_of(g, {y: X_SHAPE[:2] + [INTER]}, 17)
    x = feeds()
    up_max = np.abs(x["X"].astype(np.float64) @ weights(HIDDEN, INTER, 2)).max()
    out, _ = check_rewrite(model, ["MatMul", "Add", "MatMul", "com.quake.Glu"], x, atol=GATE["gelu"] * up_max)
    assert list(glu_node(out)[0].input) == ["bias_add_out", "up_proj_out"]


# --- never SiLU's x * sigmoid(x), and what stays --------------------------------------------------


def test_silu_alone_stays_a_silu():
    g = Graph()
    y = silu(g, project(g, "X", INTER, 1, "proj"))
    out, report = check_rewrite(
        model_of(g, {y: X_SHAPE[:2] + [INTER]}, 17), ["MatMul", "com.quake.Silu"], feeds(), atol=1e-3 * 10
    )
    assert [d.rule for d in report.decisions] == ["silu"]  # the glu rule saw no pattern


def test_sigmoid_gate_of_another_tensor_is_no_glu():
    # The original GLU, a * sigmoid(b): no SiLU in it, so no com.quake Glu (whose silu is a * sigmoid(a)).
    out, report = rewrite_model(phi3_mlp_sigmoid_gate())
    assert op_types(out) == ["MatMul", "Split", "com.quake.Sigmoid", "Mul", "MatMul"]
    assert [d.rule for d in report.decisions] == ["sigmoid"]


def phi3_mlp_sigmoid_gate():
    g = Graph()
    h = project(g, "X", 2 * INTER, 4, "proj")
    g.node("Split", [h, g.const([INTER, INTER], "sizes", dtype=np.int64)], name="split", outputs=["a", "b"], axis=-1)
    y = g.node("Mul", ["a", g.node("Sigmoid", ["b"], name="sig")], name="gated")
    y = g.node("MatMul", [y, g.const(weights(INTER, HIDDEN, 3), "W_down")], name="down")
    return model_of(g, {y: X_SHAPE}, 17)


def test_silu_of_x_times_x_is_a_glu_of_x_and_x():
    # silu(x) * x: the up is the gate's input itself, a legitimate (if odd) Glu(x, x).
    g = Graph()
    p = project(g, "X", INTER, 1, "proj")
    y = g.node("Mul", [silu(g, p), p], name="gated")
    out, _ = check_rewrite(
        model_of(g, {y: X_SHAPE[:2] + [INTER]}, 17), ["MatMul", "com.quake.Glu"], feeds(), atol=1e-3 * 20
    )
    assert list(glu_node(out)[0].input) == ["proj_out", "proj_out"]


def test_scaling_by_a_constant_is_no_gate():
    g = Graph()
    y = g.node(
        "Mul", [silu(g, project(g, "X", INTER, 1, "proj")), g.const(np.full(INTER, 0.5), "scale")], name="scaled"
    )
    out, report = rewrite_model(model_of(g, {y: X_SHAPE[:2] + [INTER]}, 17))
    assert op_types(out) == ["MatMul", "com.quake.Silu", "Mul"]
    assert [d.rule for d in report.decisions] == ["silu"]


def test_act_squared_is_no_gate():
    g = Graph()
    a = silu(g, project(g, "X", INTER, 1, "proj"))
    y = g.node("Mul", [a, a], name="square")
    out, report = rewrite_model(model_of(g, {y: X_SHAPE[:2] + [INTER]}, 17))
    assert op_types(out) == ["MatMul", "com.quake.Silu", "Mul"]


def test_broadcast_up_is_refused():
    g = Graph()
    gate = project(g, "X", INTER, 1, "gate_proj")
    up = g.node("ReduceMean", [project(g, "X", INTER, 2, "up_proj")], name="mean", axes=[1], keepdims=1)
    y = g.node("Mul", [silu(g, gate), up], name="gated")
    model = model_of(g, {y: X_SHAPE[:2] + [INTER]}, 17)
    assert_untouched(
        model,
        "glu",
        "up mean_out [2, 1, 88] and gate gate_proj_out [2, 8, 88] differ: com.quake Glu takes equal shapes",
        ops=frozenset({"glu"}),
    )
    out, _ = check_rewrite(model, ["MatMul", "MatMul", "ReduceMean", "com.quake.Silu", "Mul"], feeds(), atol=0.05)


def test_unknown_shapes_are_refused():
    g = Graph()
    y = g.node("Mul", [silu(g, "G"), "U"], name="gated")
    model = g.model({"G": ["n", 8], "U": ["m", 8]}, {y: ["n", 8]}, opset=17)
    assert_untouched(
        model, "glu", "shapes of gate G [n, 8] and up U [m, 8] are not known to be equal", ops=frozenset({"glu"})
    )


def test_symbolic_equal_shapes_are_fused():
    g = Graph()
    y = g.node("Mul", [silu(g, "G"), "U"], name="gated")
    model = g.model({"G": ["n", 8], "U": ["n", 8]}, {y: ["n", 8]}, opset=17)
    rng = np.random.default_rng(0)
    f = {"G": rng.standard_normal((5, 8)).astype(np.float32), "U": rng.standard_normal((5, 8)).astype(np.float32)}
    check_rewrite(model, ["com.quake.Glu"], f, atol=1e-3 * 4, min_elements={"glu": 0})


def test_activation_read_elsewhere_is_left_to_its_rule():
    g = Graph()
    gate, up = project(g, "X", INTER, 1, "gate_proj"), project(g, "X", INTER, 2, "up_proj")
    a = silu(g, gate)
    y = g.node("Mul", [a, up], name="gated")
    model = model_of(g, {y: X_SHAPE[:2] + [INTER], a: X_SHAPE[:2] + [INTER]}, 17)
    out, report = check_rewrite(model, ["MatMul", "MatMul", "com.quake.Silu", "Mul"], feeds(), atol=0.05)
    assert decision(report, "glu").reason == "intermediate silu_mul_out has other consumers"
    assert decision(report, "silu").replaced


def test_a_shared_sigmoid_stays_for_its_other_reader():
    g = Graph()
    gate, up = project(g, "X", INTER, 1, "gate_proj"), project(g, "X", INTER, 2, "up_proj")
    y = g.node("Mul", [silu(g, gate), up], name="gated")
    z = g.node("Add", ["sig_out", g.const(1.0)], name="other")
    model = model_of(g, {y: X_SHAPE[:2] + [INTER], z: X_SHAPE[:2] + [INTER]}, 17)
    check_rewrite(model, ["MatMul", "MatMul", "com.quake.Sigmoid", "com.quake.Glu", "Add"], feeds(), atol=0.05)


def test_a_shared_sigmoid_in_the_halves_form_keeps_the_split():
    model = phi3_mlp("split13")
    g_nodes = list(model.graph.node)
    extra = helper.make_node("Add", ["sig_out", "sig_out"], ["twice"], name="other")
    model.graph.node.insert(len(g_nodes), extra)
    model.graph.output.append(helper.make_tensor_value_info("twice", 1, X_SHAPE[:2] + [INTER]))
    check_rewrite(model, ["MatMul", "Split", "com.quake.Sigmoid", "com.quake.Glu", "MatMul", "Add"], feeds(), atol=0.05)


def test_not_selected():
    model = llama_mlp("silu")
    out, report = check_rewrite(
        model, ["MatMul", "MatMul", "com.quake.Silu", "Mul", "MatMul"], feeds(), atol=0.05, ops=frozenset({"silu"})
    )
    assert decision(report, "glu").reason == "glu is not among the selected ops"
    out, _ = rewrite_model(model, ops=frozenset({"glu"}))
    assert op_types(out) == ["MatMul", "MatMul", "com.quake.Glu", "MatMul"]


@pytest.mark.parametrize("skipped", ["sig", "gated"])
def test_skipping_a_node_keeps_the_pattern(skipped):
    out, report = rewrite_model(llama_mlp("silu"), skip_nodes=frozenset({skipped}))
    assert decision(report, "glu").reason == "skipped by --skip-nodes"
    assert "com.quake.Glu" not in op_types(out)


def test_double_is_not_supported():
    assert_untouched(llama_mlp("silu", F64), "glu", "element type double is not supported")


def test_small_static_tensors_stay_below_the_break_even():
    g = Graph()
    y = g.node("Mul", [silu(g, "G"), "U"], name="gated")
    model = g.model({"G": [4, 8], "U": [4, 8]}, {y: [4, 8]}, opset=17)
    out, report = quake_onnx.optimize(model, ort_fusions=False)
    assert "below the 2048-element break-even" in decision(report, "glu").reason


def test_optimize_end_to_end_runs_at_every_ort_level(tmp_path):
    # The whole pipeline (ORT as oracle, value_info stated for the Glu output) on both forms;
    # the written model loads and runs with ORT's own optimizations on.
    import onnxruntime as ort

    for name, model in [("llama", llama_mlp("silu")), ("phi3", phi3_mlp("split13"))]:
        path = tmp_path / f"{name}.quake.onnx"
        out, report = quake_onnx.optimize(model, path, min_elements=0)
        assert "com.quake.Glu" in op_types(out), report.decisions
        x = feeds()
        want = run(model, x)[0]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.register_custom_ops_library(quake_onnx.get_library_path())
        got = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, x)[0]
        np.testing.assert_allclose(got, want, atol=down_atol("silu", x["X"]) * 2)
