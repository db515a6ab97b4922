"""EXAQ benchmark: com.quake Softmax method "exaq" against the quake method
and ONNX Runtime's Softmax.

    python -m quake_onnx.bench exaq [--threads 1,2] [--markdown FILE]

The measurement is ops.py's: both sides in this process, same
intra_op_num_threads, ORT_ENABLE_ALL, one session alive at a time, 8
independent nodes per model bound to one input and one output buffer, three
interleaved rounds with the fastest median kept. Input N(0, 3^2); the fixed
clips are the formula's C at sigma 3 (what `calibrate` writes for such data).
"""

from __future__ import annotations

import numpy as np

from .. import reference
from . import ops

SHAPES = [(12, 128, 128), (12, 512, 512), (1, 32, 1, 4096)]
INPUT_SIGMA = 3.0


def configs(bits_list=(2, 3, 4, 5, 6, 8)):
    """(label, attrs or None for ORT's Softmax)."""
    out = [("ORT Softmax", None), ("quake order 1", {"order": 1}), ("quake order 2", {"order": 2})]
    for bits in bits_list:
        clip = float(np.float32(reference.exaq_clip(bits, INPUT_SIGMA)))
        out.append((f"exaq {bits} bits, fixed C", {"method": "exaq", "bits": bits, "clip": clip}))
    out.append(("exaq 3 bits, clip 0 (C per row)", {"method": "exaq", "bits": 3, "clip": 0.0}))
    out.append(("exaq 8 bits, clip 0 (C per row)", {"method": "exaq", "bits": 8, "clip": 0.0}))
    return out


def run(shapes=SHAPES, threads=(1, 2), min_time=0.6, rounds=3, seed=0, progress=print):
    rng = np.random.default_rng(seed)
    rows = []
    for shape in shapes:
        x = (rng.standard_normal(shape) * INPUT_SIGMA).astype(np.float32)
        elems = x.size * ops.NODES_PER_MODEL / 1e9
        models = {}
        for label, attrs in configs():
            if attrs is None:
                models[label] = (ops._model(shape, ops._single("Softmax", axis=-1)), False)
            else:
                models[label] = (ops._model(shape, ops._single("Softmax", domain="com.quake", **attrs)), True)
        for t in threads:
            best = {label: float("inf") for label in models}
            for _ in range(rounds):
                for label, (model, with_library) in models.items():
                    best[label] = min(best[label], ops._median_seconds(model, t, with_library, x, min_time / rounds))
            for label in models:
                row = (
                    label,
                    shape,
                    t,
                    elems / best[label],
                    best["ORT Softmax"] / best[label],
                    best["quake order 2"] / best[label],
                )
                rows.append(row)
                progress(_format(row))
    return rows


def _format(row) -> str:
    label, shape, t, gelems, vs_ort, vs_quake = row
    return f"| {label} | {'x'.join(map(str, shape))} | {t} | {gelems:.2f} | {vs_ort:.2f}x | {vs_quake:.2f}x |"


HEADER = "| softmax | shape | threads | Gelem/s | vs ORT | vs quake order 2 |\n|---|---|---|---|---|---|"


def markdown(rows) -> str:
    return "\n".join([HEADER] + [_format(r) for r in rows])
