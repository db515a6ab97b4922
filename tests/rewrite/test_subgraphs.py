import numpy as np
from onnx import TensorProto, helper

from quake_onnx.rewrite import rewrite_model

from .builders import GELU_ERF_ATOL, SOFTMAX_ATOL, Graph, check_rewrite, sample
from .gelu_forms import erf_gelu

FEEDS = {"X": sample((3, 8)), "C": np.array(True)}


def branch(name, nodes, output):
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(output, TensorProto.FLOAT, [3, 8])])


def if_model(inner_if=False):
    then = branch("then", [helper.make_node("Softmax", ["X"], ["t"], name="sm", axis=-1)], "t")
    if inner_if:  # an If inside the else branch, whose then branch holds a Sigmoid
        deeper = branch("deeper", [helper.make_node("Sigmoid", ["X"], ["d"], name="sig")], "d")
        plain = branch("plain", [helper.make_node("Identity", ["X"], ["p"], name="id")], "p")
        other = branch(
            "else", [helper.make_node("If", ["C"], ["e"], name="inner", then_branch=deeper, else_branch=plain)], "e"
        )
    else:
        g = Graph()
        y = erf_gelu(g, "X")
        other = helper.make_graph(
            g.nodes, "else", [], [helper.make_tensor_value_info(y, TensorProto.FLOAT, [3, 8])], initializer=g.inits
        )
    graph = helper.make_graph(
        [helper.make_node("If", ["C"], ["Y"], name="if", then_branch=then, else_branch=other)],
        "main",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [3, 8]),
            helper.make_tensor_value_info("C", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [3, 8])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def inner_ops(graph):
    return [f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in graph.node]


def test_if_branches():
    out, report = check_rewrite(if_model(), ["If"], FEEDS, atol=max(SOFTMAX_ATOL, GELU_ERF_ATOL))
    check_rewrite(if_model(), ["If"], {**FEEDS, "C": np.array(False)}, atol=GELU_ERF_ATOL)
    node = out.graph.node[0]
    graphs = {a.name: a.g for a in node.attribute}
    then, other = graphs["then_branch"], graphs["else_branch"]
    assert inner_ops(then) == ["com.quake.Softmax"]
    assert inner_ops(other) == ["com.quake.Gelu"]
    where = {d.rule: d.graph for d in report.decisions}
    assert where == {"softmax": "main/if.then_branch", "erf_gelu": "main/if.else_branch"}
    assert all(d.replaced for d in report.decisions)
    assert len(other.initializer) == 0  # the erf-GELU's constants went with it


def test_nested_if():
    out, report = check_rewrite(if_model(inner_if=True), ["If"], FEEDS, atol=SOFTMAX_ATOL)
    assert {d.graph for d in report.decisions} == {"main/if.then_branch", "main/if.else_branch/inner.then_branch"}


def test_outer_tensor_read_in_a_subgraph_counts_as_a_consumer():
    # The Erf output is also read inside the If: the erf-GELU must not swallow it.
    g = Graph()
    y = erf_gelu(g, "X")
    then = branch("then", [helper.make_node("Identity", ["erf_out"], ["t"], name="id_t")], "t")
    other = branch("else", [helper.make_node("Identity", [y], ["e"], name="id_e")], "e")
    g.nodes.append(helper.make_node("If", ["C"], ["Y"], name="if", then_branch=then, else_branch=other))
    model = g.model({"X": [3, 8], "C": ([], TensorProto.BOOL)}, {"Y": [3, 8]})
    _, report = rewrite_model(model)
    (d,) = [d for d in report.decisions if d.rule == "erf_gelu"]
    assert not d.replaced and d.reason == "intermediate erf_out has other consumers"


def test_loop_body():
    # The body's Sigmoid reads the outer X; acc sums it N times.
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
            helper.make_node("Sigmoid", ["X"], ["s"], name="sig"),
            helper.make_node("Add", ["acc_in", "s"], ["acc_out"], name="acc"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [3, 8]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [3, 8]),
        ],
    )
    g = Graph()
    g.nodes.append(helper.make_node("Loop", ["N", "", "A"], ["Y"], name="loop", body=body))
    model = g.model({"X": [3, 8], "A": [3, 8], "N": ([], TensorProto.INT64)}, {"Y": [3, 8]}, opset=17)
    feeds = {"X": sample((3, 8)), "A": np.zeros((3, 8), np.float32), "N": np.array(3, np.int64)}
    out, report = check_rewrite(model, ["Loop"], feeds, atol=3e-3)
    (d,) = report.decisions
    assert d.replaced and d.graph == "main/loop.body"
