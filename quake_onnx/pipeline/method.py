"""Stage 5: the method of the com.quake Softmax nodes the rewrite made:
"quake" (the polynomial exponential, as made) or "exaq" (EXAQ, exaq.py)."""

from __future__ import annotations

from .. import exaq
from .job import Job


def choose_softmax_method(job: Job) -> Job:
    if job.settings.softmax_method == "exaq":
        exaq.use_exaq(job.model, job.report, job.settings.bits, set(job.existing_softmax))
    return job
