"""Puts back what a gs.import_onnx / gs.export_onnx round trip loses.

gs rebuilds the ModelProto: model-level fields, node doc strings and metadata,
the order of initializers and value_info, and the graph an initializer is in
(gs copies an outer one into each subgraph reading it) are not carried over,
and a rewritten model should differ from its source only where nodes were
replaced.
"""

from __future__ import annotations

from typing import Iterator

import onnx

from ..modelio import iter_graphs as graphs

Key = tuple  # a graph's place: (outputs of the node holding it, attribute, index) per level

_MODEL_FIELDS = ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string")


def _keyed(graph: onnx.GraphProto, key: Key = ()) -> Iterator[tuple[Key, onnx.GraphProto]]:
    """Every graph with a key the rewrite keeps: it replaces no If / Loop / Scan node."""
    yield key, graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _keyed(attr.g, (*key, (tuple(node.output), attr.name, -1)))
            for i, sub in enumerate(attr.graphs):
                yield from _keyed(sub, (*key, (tuple(node.output), attr.name, i)))


def _place_initializers(original: onnx.ModelProto, out: onnx.ModelProto) -> None:
    """gs writes a constant into every graph whose nodes read it, so an outer initializer read
    in a subgraph comes back copied into it (a weight read in both graphs twice), or moved
    there. Puts each back in the graph that held it; new ones stay where gs put them."""
    held = {key: {t.name for t in g.initializer} for key, g in _keyed(original.graph)}
    by_key = dict(_keyed(out.graph))
    for key, graph in by_key.items():
        moved = set()
        for tensor in graph.initializer:
            if tensor.name in held.get(key, ()):
                continue
            # The value the subgraph read: the nearest enclosing graph's initializer of that name.
            home = next((key[:i] for i in range(len(key) - 1, -1, -1) if tensor.name in held.get(key[:i], ())), None)
            if home is None or home not in by_key:
                continue  # made by the rewrite
            target = by_key[home]
            if all(t.name != tensor.name for t in target.initializer):
                target.initializer.append(tensor)
            moved.add(tensor.name)
        if moved:
            kept = [t for t in graph.initializer if t.name not in moved]
            del graph.initializer[:]
            graph.initializer.extend(kept)


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
    _place_initializers(original, out)
    sources = dict(_keyed(original.graph))
    for key, graph in _keyed(out.graph):
        if key in sources:
            _reorder(graph.initializer, [t.name for t in sources[key].initializer])
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
