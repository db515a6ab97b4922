"""Stage 4: replace Softmax, GELU, SiLU/Sigmoid, Exp ... with com.quake nodes
(rewrite/passes.py with the per-op rules, rewrite/rules OP_RULES), with big
tensors' bytes set aside while the pass runs."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import onnx

from .. import exaq, modelio
from .job import Job, OptimizeError


def rewrite_ops(job: Job) -> Job:
    """job.model becomes the rewritten model and job.report says what became
    of every candidate node. Raises OptimizeError (exit 1) when the pass fails."""
    s = job.settings
    missing = sorted(s.skip - _node_names(job.model))
    if missing:
        job.warnings.append(f"--skip-nodes: no node named {', '.join(missing)}")
    job.existing_softmax = frozenset(exaq.quake_softmax_outputs(job.model))
    # Kept activations are the default's safety: a model ORT has laid out has none left to keep.
    rewritten, report = rewrite_light(
        job.model,
        s.order,
        s.ops,
        s.skip | frozenset(job.kept),
        not job.laid_out,
        dict(s.floors),
        job.type_hints,
        _op_rules(),
        select=s.select,
    )
    report.decisions[:] = [
        dataclasses.replace(d, reason=f"kept: ONNX Runtime fuses it into com.microsoft.{job.kept[d.node]}")
        if d.node in job.kept and not d.replaced and d.node not in s.skip
        else d
        for d in report.decisions
    ]
    report.decisions[:0] = job.report.decisions  # an earlier stage's (attention fusion) come first
    job.model, job.report = rewritten, report
    return job


def _op_rules():
    try:
        from ..rewrite.rules import OP_RULES
    except ImportError as e:
        raise OptimizeError(f"the rewrite pass is not available: {e}", exit_code=1) from None
    return OP_RULES


def _rewrite(
    model: onnx.ModelProto,
    order: int,
    ops: frozenset,
    skip: frozenset,
    keep_layout: bool,
    min_elements: dict,
    type_hints: Sequence[onnx.ValueInfoProto],
    rules,
    select=None,
    fuse_symbolic=frozenset(),
):
    try:
        from ..rewrite.passes import rewrite_model
    except ImportError as e:
        raise OptimizeError(f"the rewrite pass is not available: {e}", exit_code=1) from None
    return rewrite_model(
        model,
        order=order,
        ops=ops,
        skip_nodes=skip,
        keep_conv_layout=keep_layout,
        min_elements=min_elements,
        type_hints=type_hints,
        rules=rules,
        select=dict(select) if select is not None else None,
        fuse_symbolic=fuse_symbolic,
    )


def rewrite_light(
    model, order, ops, skip, keep_layout, min_elements, type_hints, rules, select=None, fuse_symbolic=frozenset()
):
    """rewrite_model with `rules` and big tensors' bytes set aside (see
    strip_large_tensors). `model` is as it was after. `select`: ((rule,
    anchor name), Pick) pairs, see Settings.select; `fuse_symbolic`: see rewrite_model."""

    def run():
        return _rewrite(model, order, ops, skip, keep_layout, min_elements, type_hints, rules, select, fuse_symbolic)

    stash = modelio.strip_large_tensors(model)
    try:
        try:
            rewritten, report = run()
        except OptimizeError:
            raise
        except Exception as e:
            # The pass may have wanted a stripped tensor's values: run it on the
            # whole model, which protobuf can hold when it is under 2 GB.
            modelio.restore_large_tensors(model, stash)
            if not stash or modelio.needs_external_data(model):
                raise OptimizeError(f"the rewrite failed: {type(e).__name__}: {e}", exit_code=1) from e
            stash = {}
            rewritten, report = run()
        modelio.restore_large_tensors(rewritten, stash)
    finally:
        modelio.restore_large_tensors(model, stash)
    return rewritten, report


def _node_names(model: onnx.ModelProto) -> set[str]:
    names: set[str] = set()

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            names.add(node.name)
            for attr in node.attribute:
                if attr.HasField("g"):
                    visit(attr.g)
                for g in attr.graphs:
                    visit(g)

    visit(model.graph)
    return names
