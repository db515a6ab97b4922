"""The exaq softmax method in the optimizer: `optimize(..., softmax_method="exaq",
bits=3)` turns the com.quake Softmax nodes the rewrite pass made into exaq ones
(docs/ops.md), with clip 0 (C from each row's sigma) until `calibrate` fixes it.

The pass itself stays method-agnostic: it replaces Softmax nodes as for the
quake method, and this step sets method/bits on exactly the nodes it created
(com.quake Softmax nodes already in the input keep their attributes), in
every graph, and says so in the report."""

from __future__ import annotations

import dataclasses

import onnx
from onnx import helper

from .modelio import iter_graphs as _graphs
from .rewrite.report import Report

METHODS = ("quake", "exaq")
BITS = range(2, 9)


def _softmax_nodes(model: onnx.ModelProto):
    for graph in _graphs(model.graph):
        for node in graph.node:
            if node.domain == "com.quake" and node.op_type == "Softmax":
                yield node


def quake_softmax_outputs(model: onnx.ModelProto) -> frozenset[str]:
    """Outputs of the com.quake Softmax nodes a model already holds."""
    return frozenset(n.output[0] for n in _softmax_nodes(model))


def use_exaq(model: onnx.ModelProto, report: Report, bits: int, existing: frozenset[str]) -> int:
    """Sets method "exaq", `bits` and clip 0 on the com.quake Softmax nodes not
    in `existing`; returns how many."""
    changed = 0
    for node in _softmax_nodes(model):
        if node.output[0] in existing:
            continue
        # order stays (validated, unused by exaq: no exponential core runs per element).
        keep = [a for a in node.attribute if a.name not in ("method", "bits", "clip")]
        del node.attribute[:]
        node.attribute.extend(keep)
        node.attribute.extend(
            [
                helper.make_attribute("method", "exaq"),
                helper.make_attribute("bits", int(bits)),
                helper.make_attribute("clip", 0.0),
            ]
        )
        changed += 1
    if changed:
        report.warnings.append(
            f"{changed} Softmax node(s) use exaq with clip 0 (C derived per row, about 3x slower than a fixed clip on "
            "rows of 128); fix it from sample inputs with `quake-onnx calibrate`"
        )
    label = f"com.quake Softmax (exaq, {bits} bits)"
    report.decisions[:] = [
        dataclasses.replace(d, reason=d.reason.replace("com.quake Softmax", label, 1))
        if d.replaced and d.rule == "softmax"
        else d
        for d in report.decisions
    ]
    return changed
