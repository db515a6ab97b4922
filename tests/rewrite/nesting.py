"""Models whose patterns cross If / Loop / Scan boundaries, and the checks they share.

A pattern's nodes are split between graphs: the first ones stay in the outer
graph, the rest go into the body of a control-flow node, which reads the outer
values it needs (ONNX's implicit outer-scope references) and returns what the
pattern computes. Paths name graphs as the report does ("main/if.then_branch").
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from .builders import F32, check_rewrite, run

SHAPE = [3, 8]
TRIPS = 2  # Loop iterations, and the Scan's stacked copies


def info(name: str, shape: Optional[Sequence[int]] = SHAPE, elem: int = F32) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, None if shape is None else list(shape))


def graph_ops(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Op types per graph, keyed by the report's graph paths; graphs without nodes are left out."""
    found: dict[str, list[str]] = {}

    def visit(graph: onnx.GraphProto, path: str) -> None:
        ops = [n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in graph.node]
        if ops:
            found[path] = ops
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    visit(attr.g, f"{path}/{node.name or node.op_type}.{attr.name}")
                for i, sub in enumerate(attr.graphs):
                    visit(sub, f"{path}/{node.name or node.op_type}.{attr.name}[{i}]")

    visit(model.graph, "main")
    return found


def subgraph(model: onnx.ModelProto, path: str) -> onnx.GraphProto:
    """The graph at a report path ("main/if.then_branch/inner.else_branch")."""
    graph = model.graph
    for step in path.split("/")[1:]:
        name, attr = step.rsplit(".", 1)
        node = next(n for n in graph.node if n.name == name)
        graph = next(a.g for a in node.attribute if a.name == attr)
    return graph


def if_node(
    name: str, then: onnx.GraphProto, other: onnx.GraphProto, outputs: Sequence[str], cond: str = "C"
) -> onnx.NodeProto:
    return helper.make_node("If", [cond], list(outputs), name=name, then_branch=then, else_branch=other)


def branch(name: str, nodes: Sequence[onnx.NodeProto], outputs: Sequence[str], shapes=None) -> onnx.GraphProto:
    """An If branch (no inputs) returning `outputs` (float, SHAPE unless `shapes` says)."""
    shapes = shapes or [SHAPE] * len(outputs)
    return helper.make_graph(list(nodes), name, [], [info(o, s) for o, s in zip(outputs, shapes)])


def loop_node(
    name: str,
    body_nodes: Sequence[onnx.NodeProto],
    outputs: Sequence[str],
    initial: str,
    carried: str = "v_in",
    trips: str = "trips",
) -> tuple[onnx.NodeProto, list[str]]:
    """A Loop running TRIPS times: `carried` starts as `initial` and stays unchanged, each of
    `outputs` (computed by `body_nodes`) is stacked over the iterations. Returns the node and
    its outputs: the final carried value, then the stacked outputs."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name=f"{name}_cond"),
            helper.make_node("Identity", [carried], [f"{carried}_out"], name=f"{name}_carry"),
            *body_nodes,
        ],
        f"{name}_body",
        [info("iter", [], TensorProto.INT64), info("cond_in", [], TensorProto.BOOL), info(carried)],
        [info("cond_out", [], TensorProto.BOOL), info(f"{carried}_out"), *[info(o) for o in outputs]],
    )
    results = [f"{name}_final"] + [f"{name}_{o}" for o in outputs]
    return helper.make_node("Loop", [trips, "", initial], results, name=name, body=body), results


def scan_node(
    name: str, body_nodes: Sequence[onnx.NodeProto], outputs: Sequence[str], stacked: str, slice_name: str = "x_i"
) -> tuple[onnx.NodeProto, list[str]]:
    """A Scan over the first axis of `stacked` (TRIPS copies of a SHAPE tensor): the body sees
    one copy as `slice_name`; each of `outputs` is stacked over the iterations."""
    body = helper.make_graph(list(body_nodes), f"{name}_body", [info(slice_name)], [info(o) for o in outputs])
    results = [f"{name}_{o}" for o in outputs]
    return helper.make_node("Scan", [stacked], results, name=name, body=body, num_scan_inputs=1), results


def stack(x: str, out: str, prefix: str) -> list[onnx.NodeProto]:
    """Nodes making `out` = TRIPS copies of `x` along a new first axis (a Scan's input); reads
    the int64 initializer "axis0" = [0]."""
    copy = f"{prefix}_copy"
    return [
        helper.make_node("Unsqueeze", [x, "axis0"], [copy], name=f"{prefix}_unsqueeze"),
        helper.make_node("Concat", [copy] * TRIPS, [out], name=f"{prefix}_concat", axis=0),
    ]


def compare(original: onnx.ModelProto, rewritten: onnx.ModelProto, feeds: dict, atol, rtol: float = 0.0) -> None:
    """Outputs of both models through ONNX Runtime (no graph optimizations, com.quake registered)
    within atol (one number, or one per output) + rtol."""
    want, got = run(original, feeds), run(rewritten, feeds)
    bounds = atol if isinstance(atol, (list, tuple)) else [atol] * len(want)
    for w, g, bound in zip(want, got, bounds):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), atol=bound, rtol=rtol)


def check_nested(
    model: onnx.ModelProto,
    expected: dict[str, list[str]],
    feeds: Sequence[dict],
    atol=0.0,
    rtol: float = 0.0,
    **options,
):
    """check_rewrite (main graph ops, full check, outputs, input untouched, idempotent) plus
    the op types of every graph and the outputs for every feeds (e.g. both If conditions)."""
    first = atol if not isinstance(atol, (list, tuple)) else max(atol)
    out, report = check_rewrite(model, expected["main"], feeds[0], atol=first, rtol=rtol, **options)
    assert graph_ops(out) == expected
    for more in feeds:
        compare(model, out, more, atol, rtol)
    return out, report
