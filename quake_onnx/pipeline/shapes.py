"""Stage 6: state the inferred types and shapes of the com.quake outputs in
the main graph's value_info.

The library's custom ops tell ONNX Runtime only fully static output shapes,
so at session time a shape-dependent fusion downstream of a com.quake node
(SkipLayerNormalization, MatMul+Add into Gemm, NCHWc layouts) would stop; ORT
takes these shapes from value_info. Only the replaced nodes' outputs are
stated: ORT then knows what it knew for its own ops, no more, and makes the
fusions it would have made on the original (more shapes let it make others,
which are not always faster: SkipLayerNormalization is slower than
LayerNormalization + Add here)."""

from __future__ import annotations

import onnx

from .. import modelio
from .job import Job


def state_shapes(job: Job) -> Job:
    stash = modelio.strip_large_tensors(job.model)  # inference serialises the model: under 2 GB
    try:
        annotate_shapes(job.model)
    finally:
        modelio.restore_large_tensors(job.model, stash)
    return job


def annotate_shapes(model: onnx.ModelProto) -> None:
    try:
        from ..schemas import register_schemas

        register_schemas()
        typed = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # too big to serialise, or an op whose inference raises: ORT works without
        return
    known = {v.name for v in model.graph.value_info}
    outputs = {o for n in model.graph.node if n.domain == "com.quake" for o in n.output}
    model.graph.value_info.extend(v for v in typed.graph.value_info if v.name in outputs and v.name not in known)
