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

import onnx

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
    )
    job.model = rewritten
    job.report.decisions.extend(report.decisions)
    return job


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
