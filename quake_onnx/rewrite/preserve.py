"""Puts back what a gs.import_onnx / gs.export_onnx round trip loses.

gs rebuilds the ModelProto: model-level fields, node doc strings and metadata
and the order of initializers and value_info are not carried over, and a
rewritten model should differ from its source only where nodes were replaced.
"""
from __future__ import annotations

from typing import Iterator

import onnx

_MODEL_FIELDS = ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string")


def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from graphs(attr.g)
            for sub in attr.graphs:
                yield from graphs(sub)


def _reorder(field, original_names: list[str]) -> None:
    rank = {name: i for i, name in enumerate(original_names)}
    items = sorted(field, key=lambda item: rank.get(item.name, len(rank)))  # stable: new entries keep their order
    copies = [type(item)() for item in items]
    for copy, item in zip(copies, items):
        copy.CopyFrom(item)
    del field[:]
    field.extend(copies)


def restore(original: onnx.ModelProto, out: onnx.ModelProto, extra_opsets: list[onnx.OperatorSetIdProto]) -> None:
    for name in _MODEL_FIELDS:
        setattr(out, name, getattr(original, name))
    for name in ("metadata_props", "opset_import", "functions", "training_info"):
        field = getattr(out, name)
        del field[:]
        field.extend(getattr(original, name))
    out.opset_import.extend(extra_opsets)
    out.graph.name = original.graph.name
    out.graph.doc_string = original.graph.doc_string
    _reorder(out.graph.initializer, [t.name for t in original.graph.initializer])
    _reorder(out.graph.value_info, [v.name for v in original.graph.value_info])

    # Outputs are unique across the model (SSA), so they identify untouched nodes.
    by_outputs = {tuple(n.output): n for g in graphs(original.graph) for n in g.node}
    for graph in graphs(out.graph):
        for node in graph.node:
            source = by_outputs.get(tuple(node.output))
            if source is None or source.op_type != node.op_type:
                continue
            node.doc_string = source.doc_string
            del node.metadata_props[:]
            node.metadata_props.extend(source.metadata_props)
            _reorder(node.attribute, [a.name for a in source.attribute])
