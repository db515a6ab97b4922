"""Stage 3: fuse attention blocks into com.quake Attention (issue: fused
attention). Until that rule exists this stage hands the job on unchanged;
it sits before the per-op rewrite so the Softmax of a fused block is never
offered to the per-op rules."""
from __future__ import annotations

from .job import Job


def fuse_attention(job: Job) -> Job:
    return job
