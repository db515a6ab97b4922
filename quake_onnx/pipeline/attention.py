"""Stage 3: fuse attention blocks into com.quake Attention (the attention rules
of rewrite/rules, ATTENTION_RULES), on the graph ort_oracle hands on.

It runs before the per-op rewrite, so the Softmax of a fused block is never
offered to the per-op rules, and a block it refuses (with the reason: its form,
or its size below the measured break-even, docs/optimize.md) stays whole for
them.

A Softmax the oracle keeps because ONNX Runtime folds it into
com.microsoft.Attention is fused here all the same: ORT's CPU Attention
computes the block unfused (scores written out, as in the original graph),
ours does not, and above the break-even ours is faster. Below it the block is
left, and the per-op stage keeps that Softmax for ORT as before."""

from __future__ import annotations

import dataclasses

import onnx
from onnx import helper

from ..modelio import iter_graphs as _graphs
from .job import Job, OptimizeError
from .op_rewrite import rewrite_light

# What the attention rules are anchored at (rules/attention.py, mha.py, onnx_attention.py).
ANCHORS = frozenset({("", "Softmax"), ("com.microsoft", "MultiHeadAttention"), ("", "Attention")})


def fuse_attention(job: Job) -> Job:
    """job.model has its attention blocks fused; their decisions open job.report.
    Raises OptimizeError (exit 1) when the pass fails."""
    if not _has_anchor(job.model.graph):
        return job  # most models without attention: no second pass over the graph
    s = job.settings
    existing = frozenset(_quake_attention_outputs(job.model.graph))
    rewritten, report = rewrite_light(
        job.model,
        s.order,
        s.ops,
        s.skip,
        not job.laid_out,
        dict(s.floors),
        job.type_hints,
        _attention_rules(),
        select=s.select,
        fuse_symbolic=s.fuse_symbolic,
    )
    job.model = rewritten
    decisions = report.decisions
    if s.attention_precision != "float32" and _set_precision(rewritten.graph, s.attention_precision, existing):
        note = f"; precision {s.attention_precision}, run here by {_bf16_engine()}"
        decisions = [dataclasses.replace(d, reason=d.reason + note) if d.replaced else d for d in decisions]
    job.report.decisions.extend(decisions)
    return job


def _quake_attention_nodes(graph: onnx.GraphProto):
    for g in _graphs(graph):
        for node in g.node:
            if node.domain == "com.quake" and node.op_type == "Attention":
                yield node


def _quake_attention_outputs(graph: onnx.GraphProto):
    return [node.output[0] for node in _quake_attention_nodes(graph) if node.output]


def _set_precision(graph: onnx.GraphProto, precision: str, existing: frozenset) -> int:
    """Sets `precision` on the com.quake Attention nodes this pass made (not
    those the input already had); returns how many."""
    changed = 0
    for node in _quake_attention_nodes(graph):
        if node.output and node.output[0] in existing:
            continue
        keep = [a for a in node.attribute if a.name != "precision"]
        del node.attribute[:]
        node.attribute.extend(keep)
        node.attribute.append(helper.make_attribute("precision", precision))
        changed += 1
    return changed


def _bf16_engine() -> str:
    """What runs precision bfloat16 on this machine, for --explain."""
    try:
        from .._library import attention_bf16_engine

        return attention_bf16_engine()
    except (OSError, AttributeError) as e:  # no library here (a source checkout): say so, do not fail
        return f"an engine not known here (the com.quake library did not load: {e})"
    except ValueError as e:  # QUAKE_ISA / QUAKE_NEON_BF16 refused: the sessions say so too
        return f"an engine not known here ({e})"


def _attention_rules():
    try:
        from ..rewrite.rules import ATTENTION_RULES
    except ImportError as e:
        raise OptimizeError(f"the rewrite pass is not available: {e}", exit_code=1) from None
    return ATTENTION_RULES


def _has_anchor(graph: onnx.GraphProto) -> bool:
    for node in graph.node:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        if (domain, node.op_type) in ANCHORS:
            return True
        for attr in node.attribute:
            if attr.HasField("g") and _has_anchor(attr.g):
                return True
            if any(_has_anchor(g) for g in attr.graphs):
                return True
    return False
