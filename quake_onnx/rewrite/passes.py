"""The rewrite pass: `rewrite_model` replaces exponential non-linearities with com.quake nodes."""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence

import onnx
import onnx_graphsurgeon as gs

from ..schemas import DOMAIN, VERSION, register_schemas
from . import preserve
from .context import Context, Names, Pick
from .engine import Engine
from .report import Report
from .rule import Rule
from .rules import RULES
from .scopes import Scopes
from .types import TypeTable

ALL_OPS = frozenset({"attention", "glu", "softmax", "logsoftmax", "gelu", "silu", "sigmoid", "exp"})
ORDERS = (1, 2, 3)


def rewrite_model(
    model: onnx.ModelProto,
    *,
    order: int = 2,
    ops: frozenset[str] = ALL_OPS,
    skip_nodes: frozenset[str] = frozenset(),
    keep_conv_layout: bool = True,
    min_elements: Mapping[str, int] = {},
    type_hints: Iterable[onnx.ValueInfoProto] = (),
    rules: Optional[Sequence[Rule]] = None,
    select: Optional[Mapping[tuple[str, str], Pick]] = None,
    fuse_symbolic: frozenset[str] = frozenset(),
) -> tuple[onnx.ModelProto, Report]:
    """Return (rewritten copy of `model`, what was done to every candidate). `model` is not modified.

    order: the com.quake `order` attribute of every new node (1, 2 or 3).
    ops: which families to replace (a subset of ALL_OPS); the others are reported as not selected.
    skip_nodes: names of nodes to leave alone; a pattern touching one is left whole.
    keep_conv_layout: leave the activations ONNX Runtime would run in its NCHWc conv layout or
        fuse into a Conv (see layout.py); False for a model ORT has already laid out, whose
        blocked activations are then replaced (elementwise ops only).
    min_elements: per op family, the element count below which a node whose
        input shape is fully static is left (engine.BREAK_EVEN holds the
        measured break-even of a custom-op call; `optimize` applies it).
    type_hints: types of tensors onnx cannot infer (after another library's
        custom ops), e.g. ONNX Runtime's (ort_fusions.ort_types); not written
        into the result.
    rules: the rules to run (rules/__init__.py), None for all of them, attention
        fusion first; the optimizer runs ATTENTION_RULES and OP_RULES as two stages.
    select: when given, only the (rule name, anchor node name) pairs in it are
        replaced (the others are kept, "not selected"), each with its Pick's
        order (and Softmax attributes) instead of `order`: `quake-onnx tune`'s
        variants.
    fuse_symbolic: families whose nodes of symbolic size are replaced even
        where their rule would leave them below its break-even (a rule's
        unknown_size_reason): optimize's attention at precision bfloat16.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    ops = frozenset(ops)
    if ops - ALL_OPS:
        raise ValueError(f"unknown ops {sorted(ops - ALL_OPS)}; choose from {sorted(ALL_OPS)}")
    register_schemas()  # so shape inference sees through com.quake nodes of an earlier pass

    work = onnx.ModelProto()
    work.CopyFrom(model)
    report = Report()
    scopes = Scopes(gs.import_onnx(work))
    context = Context(
        scope=scopes.main,
        scopes=scopes,
        opset=_default_opset(model),
        order=order,
        types=TypeTable(work, type_hints),
        names=_taken_names(model),
        skip=frozenset(skip_nodes),
        keep_conv_layout=keep_conv_layout,
        select=select,
    )
    Engine(RULES if rules is None else rules, ops, report, min_elements, fuse_symbolic).run(context)

    if not report.replaced:  # an unchanged model comes back byte for byte
        return work, report
    out = gs.export_onnx(context.graph, do_type_check=False)
    has_quake = any(o.domain == DOMAIN for o in model.opset_import)
    preserve.restore(model, out, [] if has_quake else [onnx.helper.make_opsetid(DOMAIN, VERSION)])
    return out, report


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _taken_names(model: onnx.ModelProto) -> Names:
    names = Names()
    for graph in preserve.graphs(model.graph):
        for node in graph.node:
            names.nodes.add(node.name)
            names.tensors.update(node.input)
            names.tensors.update(node.output)
        for group in (graph.input, graph.output, graph.value_info, graph.initializer):
            names.tensors.update(t.name for t in group)
    return names
