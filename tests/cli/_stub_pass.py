"""Stand-in for quake_onnx.rewrite.passes while it is being written: one
com.quake node per recognised node, same names, so the CLI can be tested.
Used only when the real module cannot be imported."""
from __future__ import annotations

import onnx
from onnx import helper

from quake_onnx.rewrite.report import Decision, Report

ALL_OPS = frozenset({"softmax", "logsoftmax", "gelu", "silu", "sigmoid", "exp"})
_RULES = {
    ("", "Softmax"): ("softmax", "Softmax"),
    ("", "LogSoftmax"): ("logsoftmax", "LogSoftmax"),
    ("", "Gelu"): ("gelu", "Gelu"),
    ("com.microsoft", "Gelu"): ("gelu", "Gelu"),
    ("com.microsoft", "BiasGelu"): ("gelu", "Gelu"),
    ("com.microsoft", "FastGelu"): ("gelu", "Gelu"),
    ("com.microsoft", "QuickGelu"): ("silu", "Silu"),
    ("", "Sigmoid"): ("sigmoid", "Sigmoid"),
    ("", "Exp"): ("exp", "Exp"),
}


def rewrite_model(model, *, order=2, ops=ALL_OPS, skip_nodes=frozenset()):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    report = Report()
    nodes = []
    for node in out.graph.node:
        rule = _RULES.get((node.domain, node.op_type))
        if rule is None:
            nodes.append(node)
            continue
        family, quake_op = rule
        op_type = node.op_type if not node.domain else f"{node.domain}.{node.op_type}"
        if family not in ops:
            why = f"{family} not selected"
        elif node.name in skip_nodes:
            why = "named in skip_nodes"
        else:
            attrs = {"order": order}
            if quake_op == "Softmax":
                attrs["axis"] = next((a.i for a in node.attribute if a.name == "axis"), -1)
            if quake_op == "Silu":
                attrs["alpha"] = next((a.f for a in node.attribute if a.name == "alpha"), 1.0)
            inputs = list(node.input)[:2] if quake_op == "Gelu" else list(node.input)[:1]
            nodes.append(helper.make_node(quake_op, inputs, list(node.output), name=node.name, domain="com.quake", **attrs))
            report.add(Decision(node.name, op_type, family, True, f"replaced by com.quake {quake_op}"))
            continue
        nodes.append(node)
        report.add(Decision(node.name, op_type, family, False, why))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    if report.replaced and not any(o.domain == "com.quake" for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid("com.quake", 1))
    return out, report
