"""Patterns whose nodes live in different graphs: a main graph and If / Loop / Scan bodies.

onnx-graphsurgeon shares outer tensors with the subgraphs that read them, so a
rule following a tensor's readers meets nodes of a nested graph. The pass
replaces such a pattern in the graph holding the nodes it replaces when that is
correct (an If branch reading the outer x), and otherwise leaves it with the
reason. The reported case: Sigmoid(x) in the main graph, Mul(x, s) in an If
branch, which stopped `quake-onnx optimize` with "max() arg is an empty sequence".
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import quake_onnx
from quake_onnx.rewrite import rewrite_model
from quake_onnx.rewrite.layout import FUSION_REASON

from .builders import GELU_ERF_ATOL, SIGMOID_ATOL, Graph, decision, op_types
from .gelu_forms import erf_gelu
from .nesting import (
    SHAPE,
    branch,
    check_nested,
    graph_ops,
    if_node,
    info,
    loop_node,
    scan_node,
    stack,
    subgraph,
)

X = np.random.default_rng(0).uniform(-3, 3, SHAPE).astype(np.float32)
BOTH = [{"X": X, "C": np.array(True)}, {"X": X, "C": np.array(False)}]
GATE_ONLY = 3 * SIGMOID_ATOL  # x * Sigmoid(x) with only the Sigmoid replaced: |x| <= 3 times its bound
SPANS = "pattern spans graphs main and main/if.then_branch"


def model(nodes, outputs, inits=(), opset=20, extra_inputs=()):
    """X (and C, the If condition) in, float SHAPE outputs unless given as (name, shape)."""
    outs = [info(*o) if isinstance(o, tuple) else info(o) for o in outputs]
    graph = helper.make_graph(
        list(nodes), "main", [info("X"), info("C", [], TensorProto.BOOL), *extra_inputs], outs, initializer=list(inits)
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def node(op, inputs, output, name, **attrs):
    return helper.make_node(op, inputs, [output], name=name, **attrs)


def scalar(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


# --- x * Sigmoid(x) with its Sigmoid outside the Mul's graph ---------------------------------


@pytest.mark.parametrize("operands", [["X", "s"], ["s", "X"]])
def test_reported_sigmoid_in_main_mul_in_if_branch(operands):
    m = model(
        [
            node("Sigmoid", ["X"], "s", "sig"),
            if_node(
                "if",
                branch("then", [node("Mul", operands, "t", "mul")], ["t"]),
                branch("else", [node("Neg", ["X"], "e", "neg")], ["e"]),
                ["Y"],
            ),
        ],
        ["Y"],
    )
    out, report = check_nested(
        m,
        {"main": ["If"], "main/if.then_branch": ["com.quake.Silu"], "main/if.else_branch": ["Neg"]},
        BOTH,
        atol=SIGMOID_ATOL,
    )
    (d,) = report.decisions
    assert (d.node, d.rule, d.graph, d.replaced) == ("sig", "silu", "main", True)
    assert d.reason == "replaced by com.quake Silu (alpha=1) in main/if.then_branch"
    assert list(subgraph(out, "main/if.then_branch").node[0].input) == ["X"]


def test_gate_read_in_another_branch_stays_for_it():
    """The Sigmoid goes only when nothing reads it in any graph: here the else branch does."""
    m = model(
        [
            node("Sigmoid", ["X"], "s", "sig"),
            if_node(
                "if",
                branch("then", [node("Mul", ["X", "s"], "t", "mul")], ["t"]),
                branch("else", [node("Neg", ["s"], "e", "neg")], ["e"]),
                ["Y"],
            ),
        ],
        ["Y"],
    )
    _, report = check_nested(
        m,
        {
            "main": ["com.quake.Sigmoid", "If"],
            "main/if.then_branch": ["com.quake.Silu"],
            "main/if.else_branch": ["Neg"],
        },
        BOTH,
        atol=SIGMOID_ATOL,
    )
    assert [(d.rule, d.replaced) for d in report.decisions] == [("silu", True), ("sigmoid", True)]


def test_mul_in_the_sigmoids_own_graph_is_taken_first():
    m = model(
        [
            node("Sigmoid", ["X"], "s", "sig"),
            if_node(
                "if",
                branch("then", [node("Mul", ["X", "s"], "t", "mul_in_branch")], ["t"]),
                branch("else", [node("Neg", ["X"], "e", "neg")], ["e"]),
                ["Y"],
            ),
            node("Mul", ["X", "s"], "Z", "mul_in_main"),
        ],
        ["Y", "Z"],
    )
    check_nested(
        m,
        {
            "main": ["com.quake.Sigmoid", "If", "com.quake.Silu"],
            "main/if.then_branch": ["Mul"],
            "main/if.else_branch": ["Neg"],
        },
        BOTH,
        atol=[GATE_ONLY, SIGMOID_ATOL],
    )


def test_reverse_sigmoid_in_branch_mul_in_main_is_no_silu():
    """Data flows out of a branch only through the If's outputs: Mul(x, If(...)) is not x * Sigmoid(x)."""
    m = model(
        [
            if_node(
                "if",
                branch("then", [node("Sigmoid", ["X"], "s", "sig")], ["s"]),
                branch("else", [node("Neg", ["X"], "e", "neg")], ["e"]),
                ["Y"],
            ),
            node("Mul", ["X", "Y"], "Z", "mul"),
        ],
        ["Z"],
    )
    _, report = check_nested(
        m,
        {"main": ["If", "Mul"], "main/if.then_branch": ["com.quake.Sigmoid"], "main/if.else_branch": ["Neg"]},
        BOTH,
        atol=GATE_ONLY,
    )
    assert [(d.rule, d.graph, d.replaced) for d in report.decisions] == [("sigmoid", "main/if.then_branch", True)]


def test_reverse_swish_scale_in_main_sigmoid_and_mul_in_branch():
    """The pattern's first node (beta * x) outside, the anchor inside: replaced in the branch,
    and the scale, read by nothing else, leaves the main graph."""
    m = model(
        [
            node("Mul", ["X", "beta"], "a", "scale"),
            if_node(
                "if",
                branch("then", [node("Sigmoid", ["a"], "s", "sig"), node("Mul", ["X", "s"], "t", "mul")], ["t"]),
                branch("else", [node("Neg", ["X"], "e", "neg")], ["e"]),
                ["Y"],
            ),
        ],
        ["Y"],
        inits=[scalar("beta", 1.702)],
    )
    out, report = check_nested(
        m,
        {"main": ["If"], "main/if.then_branch": ["com.quake.Silu"], "main/if.else_branch": ["Neg"]},
        BOTH,
        atol=SIGMOID_ATOL,
    )
    (d,) = report.decisions
    assert (d.rule, d.graph, d.reason) == ("silu", "main/if.then_branch", "replaced by com.quake Silu (alpha=1.702)")
    assert not out.graph.initializer


def test_nested_if():
    deeper = branch("deeper", [node("Mul", ["X", "s"], "d", "mul")], ["d"])
    plain = branch("plain", [node("Neg", ["X"], "p", "neg")], ["p"])
    m = model(
        [
            node("Sigmoid", ["X"], "s", "sig"),
            if_node(
                "if",
                branch("then", [if_node("inner", deeper, plain, ["t"])], ["t"]),
                branch("else", [node("Abs", ["X"], "e", "abs")], ["e"]),
                ["Y"],
            ),
        ],
        ["Y"],
    )
    inner = "main/if.then_branch/inner"
    _, report = check_nested(
        m,
        {
            "main": ["If"],
            "main/if.then_branch": ["If"],
            f"{inner}.then_branch": ["com.quake.Silu"],
            f"{inner}.else_branch": ["Neg"],
            "main/if.else_branch": ["Abs"],
        },
        BOTH,
        atol=SIGMOID_ATOL,
    )
    assert decision(report, "silu").reason == f"replaced by com.quake Silu (alpha=1) in {inner}.then_branch"


def test_new_names_stay_unique_across_graphs():
    m = model(
        [
            node("Sigmoid", ["X"], "s", "sig"),
            if_node(
                "if",
                branch("then", [node("Mul", ["X", "s"], "t", "mul")], ["t"]),
                branch("else", [node("Neg", ["X"], "sig/quake_Silu_out", "sig/quake_Silu")], ["sig/quake_Silu_out"]),
                ["Y"],
            ),
        ],
        ["Y"],
    )
    out, _ = rewrite_model(m)
    assert [n.name for n in subgraph(out, "main/if.then_branch").node] == ["sig/quake_Silu_1"]


# --- Loop and Scan bodies: once per iteration --------------------------------------------------


def loop_model(body_nodes, outputs=("t",), outer=(), initial="X"):
    loop, results = loop_node("loop", body_nodes, list(outputs), initial)
    nodes = [*outer, loop]
    stacked = [(r, [2, *SHAPE]) for r in results[1:]]
    return model(nodes, stacked, inits=[numpy_helper.from_array(np.array(2, np.int64), "trips")])


def test_loop_body_mul_of_an_outer_sigmoid_is_left_with_the_reason():
    """Silu in the body would compute the sigmoid on each iteration where the original computed
    it once: the SiLU is left, the Sigmoid replaced on its own."""
    m = loop_model([node("Mul", ["X", "s"], "t", "mul")], outer=[node("Sigmoid", ["X"], "s", "sig")])
    _, report = check_nested(
        m,
        {"main": ["com.quake.Sigmoid", "Loop"], "main/loop.body": ["Identity", "Identity", "Mul"]},
        BOTH[:1],
        atol=GATE_ONLY,
    )
    silu = decision(report, "silu")
    assert not silu.replaced and silu.reason == (
        "Sigmoid sig is outside the Loop body main/loop.body: the replacement there would compute it on every iteration"
    )
    assert decision(report, "sigmoid").replaced


def test_silu_inside_a_loop_body_on_the_carried_value():
    m = loop_model([node("Sigmoid", ["v_in"], "s", "sig"), node("Mul", ["v_in", "s"], "t", "mul")])
    _, report = check_nested(
        m,
        {"main": ["Loop"], "main/loop.body": ["Identity", "Identity", "com.quake.Silu"]},
        BOTH[:1],
        atol=SIGMOID_ATOL,
    )
    assert decision(report, "silu").graph == "main/loop.body"


def test_loop_carried_input_is_not_the_outer_value():
    """v_in starts as X and equals it on every iteration, but it is the body's own value."""
    m = loop_model([node("Mul", ["v_in", "s"], "t", "mul")], outer=[node("Sigmoid", ["X"], "s", "sig")])
    _, report = check_nested(
        m,
        {"main": ["com.quake.Sigmoid", "Loop"], "main/loop.body": ["Identity", "Identity", "Mul"]},
        BOTH[:1],
        atol=GATE_ONLY,
    )
    assert [d.rule for d in report.decisions] == ["sigmoid"]


def test_if_inside_a_loop_body_takes_the_bodys_sigmoid():
    """Within one iteration an If branch runs at most once: the Silu goes into it."""
    inner = if_node(
        "inner",
        branch("then", [node("Mul", ["v_in", "s"], "d", "mul")], ["d"]),
        branch("else", [node("Neg", ["v_in"], "p", "neg")], ["p"]),
        ["t"],
    )
    m = loop_model([node("Sigmoid", ["v_in"], "s", "sig"), inner])
    _, report = check_nested(
        m,
        {
            "main": ["Loop"],
            "main/loop.body": ["Identity", "Identity", "If"],
            "main/loop.body/inner.then_branch": ["com.quake.Silu"],
            "main/loop.body/inner.else_branch": ["Neg"],
        },
        BOTH,
        atol=SIGMOID_ATOL,
    )
    assert decision(report, "silu").reason == "replaced by com.quake Silu (alpha=1) in main/loop.body/inner.then_branch"


def test_loop_inside_an_if_branch_is_still_a_loop():
    loop, results = loop_node("loop", [node("Mul", ["X", "s"], "t", "mul")], ["t"], "X")
    then = branch("then", [node("Sigmoid", ["X"], "s", "sig"), loop], [results[1]], shapes=[[2, *SHAPE]])
    other = branch("else", [*stack("X", "e", "other")], ["e"], shapes=[[2, *SHAPE]])
    m = model(
        [if_node("if", then, other, ["Y"])],
        [("Y", [2, *SHAPE])],
        inits=[
            numpy_helper.from_array(np.array(2, np.int64), "trips"),
            numpy_helper.from_array(np.array([0]), "axis0"),
        ],
    )
    _, report = check_nested(
        m,
        {
            "main": ["If"],
            "main/if.then_branch": ["com.quake.Sigmoid", "Loop"],
            "main/if.then_branch/loop.body": ["Identity", "Identity", "Mul"],
            "main/if.else_branch": ["Unsqueeze", "Concat"],
        },
        BOTH,
        atol=GATE_ONLY,
    )
    assert "outside the Loop body main/if.then_branch/loop.body" in decision(report, "silu").reason


def scan_model(body_nodes, outer=()):
    scan, results = scan_node("scan", body_nodes, ["t"], "stacked")
    return model(
        [*outer, *stack("X", "stacked", "x"), scan],
        [(results[0], [2, *SHAPE])],
        inits=[numpy_helper.from_array(np.array([0]), "axis0")],
    )


def test_scan_body_mul_of_an_outer_sigmoid_is_left_with_the_reason():
    m = scan_model([node("Mul", ["X", "s"], "t", "mul")], outer=[node("Sigmoid", ["X"], "s", "sig")])
    _, report = check_nested(
        m,
        {"main": ["com.quake.Sigmoid", "Unsqueeze", "Concat", "Scan"], "main/scan.body": ["Mul"]},
        BOTH[:1],
        atol=GATE_ONLY,
    )
    assert "outside the Scan body main/scan.body" in decision(report, "silu").reason


def test_scan_slice_is_not_the_outer_value():
    m = scan_model([node("Mul", ["x_i", "s"], "t", "mul")], outer=[node("Sigmoid", ["X"], "s", "sig")])
    _, report = check_nested(
        m,
        {"main": ["com.quake.Sigmoid", "Unsqueeze", "Concat", "Scan"], "main/scan.body": ["Mul"]},
        BOTH[:1],
        atol=GATE_ONLY,
    )
    assert [d.rule for d in report.decisions] == ["sigmoid"]


def test_silu_inside_a_scan_body_on_its_slice():
    m = scan_model([node("Sigmoid", ["x_i"], "s", "sig"), node("Mul", ["s", "x_i"], "t", "mul")])
    check_nested(
        m, {"main": ["Unsqueeze", "Concat", "Scan"], "main/scan.body": ["com.quake.Silu"]}, BOTH[:1], atol=SIGMOID_ATOL
    )


# --- the erf-GELU across an If boundary at every cut -------------------------------------------


def erf_gelu_cut(cut: int, tail: str = "x*p*0.5"):
    """The PyTorch erf-GELU's first `cut` nodes in the main graph, the others in the then branch."""
    g = Graph()
    y = erf_gelu(g, "X", tail)
    outer, inner = g.nodes[:cut], g.nodes[cut:]
    if not inner:  # the branch reads the result
        inner, y = [node("Identity", [y], "t", "read")], "t"
    other = branch("else", [node("Neg", ["X"], "e", "neg")], ["e"])
    return model([*outer, if_node("if", branch("then", inner, [y]), other, ["Y"])], ["Y"], inits=g.inits)


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_erf_gelu_split_across_an_if_is_left_with_the_reason(cut):
    m = erf_gelu_cut(cut)
    out, report = rewrite_model(m)
    assert out.SerializeToString() == m.SerializeToString()  # nothing replaced: the model comes back as it was
    d = decision(report, "erf_gelu")
    assert not d.replaced and d.reason == SPANS
    assert d.graph == ("main" if cut >= 2 else "main/if.then_branch")  # where the Erf is
    onnx.checker.check_model(out, full_check=True)


@pytest.mark.parametrize(
    "cut,expected",
    [
        (0, {"main": ["If"], "main/if.then_branch": ["com.quake.Gelu"], "main/if.else_branch": ["Neg"]}),
        (5, {"main": ["com.quake.Gelu", "If"], "main/if.then_branch": ["Identity"], "main/if.else_branch": ["Neg"]}),
    ],
)
def test_erf_gelu_whole_in_either_graph_is_replaced(cut, expected):
    _, report = check_nested(erf_gelu_cut(cut), expected, BOTH, atol=GELU_ERF_ATOL)
    assert decision(report, "erf_gelu").replaced


def test_bias_add_in_main_stays_out_of_a_branch_gelu():
    """A Gelu in a branch whose bias Add is in the main graph: the Add stays where it is."""
    bias = numpy_helper.from_array(np.linspace(-0.5, 0.5, SHAPE[-1]).astype(np.float32), "bias")
    m = model(
        [
            node("Add", ["X", "bias"], "h", "bias_add"),
            if_node(
                "if",
                branch("then", [node("Gelu", ["h"], "t", "gelu")], ["t"]),
                branch("else", [node("Neg", ["X"], "e", "neg")], ["e"]),
                ["Y"],
            ),
        ],
        ["Y"],
        inits=[bias],
    )
    out, _ = check_nested(
        m,
        {"main": ["Add", "If"], "main/if.then_branch": ["com.quake.Gelu"], "main/if.else_branch": ["Neg"]},
        BOTH,
        atol=GELU_ERF_ATOL,
    )
    assert list(subgraph(out, "main/if.then_branch").node[0].input) == ["h"]


# --- intermediates read from another graph -----------------------------------------------------


def test_branch_returning_an_intermediate_keeps_the_pattern():
    g = Graph()
    y = erf_gelu(g, "X")
    read = branch("then", [node("Identity", ["erf_out"], "t", "read")], ["t"])
    m = model(
        [*g.nodes, if_node("if", read, branch("else", [node("Neg", ["X"], "e", "neg")], ["e"]), ["Y"])],
        ["Y", y],
        inits=g.inits,
    )
    out, report = rewrite_model(m)
    assert decision(report, "erf_gelu").reason == "intermediate erf_out has other consumers"
    assert out.SerializeToString() == m.SerializeToString()


def test_reader_two_graphs_down_keeps_the_pattern():
    g = Graph()
    y = erf_gelu(g, "X")
    deeper = branch("deeper", [node("Identity", ["erf_out"], "d", "read")], ["d"])
    plain = branch("plain", [node("Neg", ["X"], "p", "neg")], ["p"])
    m = model(
        [
            *g.nodes,
            if_node(
                "if",
                branch("then", [if_node("inner", deeper, plain, ["t"])], ["t"]),
                branch("else", [node("Abs", ["X"], "e", "abs")], ["e"]),
                ["Y"],
            ),
        ],
        ["Y", y],
        inits=g.inits,
    )
    _, report = rewrite_model(m)
    assert decision(report, "erf_gelu").reason == "intermediate erf_out has other consumers"


def test_branch_returning_the_gate_keeps_the_sigmoid():
    m = model(
        [
            node("Sigmoid", ["X"], "s", "sig"),
            node("Mul", ["X", "s"], "Z", "mul"),
            if_node(
                "if",
                branch("then", [node("Identity", ["s"], "t", "read")], ["t"]),
                branch("else", [node("Neg", ["X"], "e", "neg")], ["e"]),
                ["Y"],
            ),
        ],
        ["Y", "Z"],
    )
    check_nested(
        m,
        {
            "main": ["com.quake.Sigmoid", "com.quake.Silu", "If"],
            "main/if.then_branch": ["Identity"],
            "main/if.else_branch": ["Neg"],
        },
        BOTH,
        atol=SIGMOID_ATOL,
    )


def test_branch_returning_an_outer_value_directly():
    """ONNX's checker and ONNX Runtime reject a subgraph output that is an outer value (it needs an
    Identity), and onnx-graphsurgeon gives such an output a tensor of its own, which no node
    reads. The pass still counts it as a reader: the intermediate it names stays defined."""
    g = Graph()
    y = erf_gelu(g, "X")
    m = model(
        [
            *g.nodes,
            if_node(
                "if", branch("then", [], ["erf_out"]), branch("else", [node("Neg", ["X"], "e", "neg")], ["e"]), ["Y"]
            ),
        ],
        ["Y", y],
        inits=g.inits,
    )
    with pytest.raises(onnx.checker.ValidationError, match="erf_out"):
        onnx.checker.check_model(m)
    with pytest.raises(Exception, match="outer scope value being returned directly"):
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    out, report = rewrite_model(m)
    assert decision(report, "erf_gelu").reason == "intermediate erf_out has other consumers"
    assert out.SerializeToString() == m.SerializeToString()


# --- ONNX Runtime fuses within one graph ---------------------------------------------------------


def test_conv_in_main_sigmoid_in_branch_is_no_fusion_target(tmp_path):
    """Conv + Sigmoid fuse into FusedConv only in one graph: a Sigmoid in a branch reading the
    main graph's Conv is replaced (ORT's own optimized graph shows no FusedConv)."""
    shape = [1, 8, 4, 4]
    w = numpy_helper.from_array(np.random.default_rng(2).standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.2, "w")
    m = model(
        [
            node("Conv", ["X", "w"], "c", "conv", kernel_shape=[1, 1]),
            if_node(
                "if",
                branch("then", [node("Sigmoid", ["c"], "s", "sig")], ["s"], shapes=[shape]),
                branch("else", [node("Neg", ["X"], "e", "neg")], ["e"], shapes=[shape]),
                ["Y"],
            ),
        ],
        [("Y", shape)],
        inits=[w],
        opset=17,
    )
    m.graph.input[0].CopyFrom(info("X", shape))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "ort.onnx")
    ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    assert "FusedConv" not in str(graph_ops(onnx.load(so.optimized_model_filepath)))

    feeds = [
        {"X": np.random.default_rng(3).uniform(-3, 3, shape).astype(np.float32), "C": np.array(c)}
        for c in (True, False)
    ]
    _, report = check_nested(
        m,
        {"main": ["Conv", "If"], "main/if.then_branch": ["com.quake.Sigmoid"], "main/if.else_branch": ["Neg"]},
        feeds,
        atol=SIGMOID_ATOL,
    )
    assert decision(report, "sigmoid").reason != FUSION_REASON


def test_optimize_takes_the_reported_model(tmp_path):
    """quake_onnx.optimize, ORT's fusions included, as `quake-onnx optimize` runs it."""
    m = model(
        [
            node("Sigmoid", ["X"], "s", "sig"),
            if_node(
                "if",
                branch("then", [node("Mul", ["X", "s"], "t", "mul")], ["t"]),
                branch("else", [node("Neg", ["X"], "e", "neg")], ["e"]),
                ["Y"],
            ),
        ],
        ["Y"],
    )
    out, report = quake_onnx.optimize(m, tmp_path / "out.onnx", min_elements=0)
    assert graph_ops(out)["main/if.then_branch"] == ["com.quake.Silu"]
    assert op_types(out) == ["If"]


def test_sibling_branch_reusing_an_intermediates_name_is_no_reader():
    """Sibling branches may each define a value of the same name (ONNX scopes names per graph and
    its ancestors): the else branch returning its own erf_out does not read the then branch's."""
    g = Graph()
    y = erf_gelu(g, "X")
    then = helper.make_graph(g.nodes, "then", [], [info(y)], initializer=g.inits)
    m = model([if_node("if", then, branch("else", [node("Neg", ["X"], "erf_out", "neg")], ["erf_out"]), ["Y"])], ["Y"])
    _, report = check_nested(
        m,
        {"main": ["If"], "main/if.then_branch": ["com.quake.Gelu"], "main/if.else_branch": ["Neg"]},
        BOTH,
        atol=GELU_ERF_ATOL,
    )
    assert decision(report, "erf_gelu").replaced


# --- what gs's export does to initializers -----------------------------------------------------


def test_outer_initializers_stay_in_their_graph():
    """gs writes a constant into every graph that reads it: W, read in main and in the branch,
    would come back twice, and V, read only in the branch, moved into it."""
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W")
    v = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "V")
    then = branch("then", [node("MatMul", ["X", "W"], "a", "mm_w"), node("MatMul", ["a", "V"], "t", "mm_v")], ["t"])
    m = model(
        [
            node("MatMul", ["X", "W"], "h", "mm"),
            node("Softmax", ["h"], "Z", "sm", axis=-1),
            if_node("if", then, branch("else", [node("Neg", ["X"], "e", "neg")], ["e"]), ["Y"]),
        ],
        ["Z", "Y"],
        inits=[w, v],
    )
    out, _ = check_nested(
        m,
        {
            "main": ["MatMul", "com.quake.Softmax", "If"],
            "main/if.then_branch": ["MatMul", "MatMul"],
            "main/if.else_branch": ["Neg"],
        },
        BOTH,
        atol=2e-3,
    )
    assert [t.name for t in out.graph.initializer] == ["W", "V"]
    assert not subgraph(out, "main/if.then_branch").initializer
