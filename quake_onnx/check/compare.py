"""Per-output agreement between a reference run and a candidate run."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Mapping, Optional

import numpy as np

# Names that mark an output as class scores or token logits.
_SCORE_NAME = re.compile(r"logit|score|prob|class|cls|pred", re.IGNORECASE)
# Elements smaller than this share of the output's largest magnitude are
# compared against that share: a relative error near a zero is noise.
REL_FLOOR = 1e-3


@dataclass
class OutputMetrics:
    name: str
    shape: list[int]
    dtype: str
    max_abs_error: float
    max_rel_error: float
    cosine: float
    nonfinite_mismatch: int  # elements non-finite in one run and not the same (inf, -inf, NaN) in the other
    scores: bool  # treated as class scores / token logits
    top1_agreement: Optional[float] = None  # share of rows whose argmax agrees (None: no rows)
    topk_agreement: Optional[float] = None  # mean |topk(ref) & topk(out)| / k over rows
    k: Optional[int] = None
    rows: Optional[int] = None
    # Elements NaN in the reference where the output has a number: not a
    # mismatch (a fully masked Softmax row is NaN in ONNX Runtime, 0 in the
    # com.quake ops by their contract), left out of the errors, reported.
    original_nan: int = 0
    # Elements compared: finite in both runs, or the same infinity (NaN against
    # NaN agrees but says nothing). 0 in a non-empty output: nothing was checked.
    compared: int = 0

    def to_dict(self) -> dict:
        return {k: _jsonable(v) for k, v in asdict(self).items()}


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def looks_like_scores(name: str, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """Class scores or token logits: floating, a last axis of at least 2, and
    either a telling name or the [batch, classes] shape of a classifier head."""
    if dtype.kind != "f" or len(shape) < 1 or shape[-1] < 2:
        return False
    return bool(_SCORE_NAME.search(name)) or len(shape) == 2


def has_nan(feeds: Mapping[str, np.ndarray]) -> bool:
    """Whether an input holds a NaN: then a number where the original gives
    NaN may be a NaN the rewrite lost, not a masked row it repaired (compare's
    excuse_nan)."""
    return any(np.asarray(v).dtype.kind == "f" and bool(np.isnan(v).any()) for v in feeds.values())


def compare(
    name: str,
    reference: np.ndarray,
    output: np.ndarray,
    top_k: int = 5,
    scores: Optional[bool] = None,
    excuse_nan: bool = True,
) -> OutputMetrics:
    """The agreement of `output` with `reference` (same shape). With
    `excuse_nan` (the caller's inputs hold no NaN), numbers where the
    reference has NaN are no mismatch (original_nan) when something else was
    compared. Rows of score outputs where the reference has a NaN are left
    out of the top-1/top-k agreement whatever `excuse_nan` (they have no
    argmax); a row where only the output has one counts as disagreeing."""
    if reference.shape != output.shape:
        raise ValueError(
            f"output {name}: shape {list(output.shape)} differs from the reference's {list(reference.shape)}"
        )
    if np.asarray(reference).dtype.kind not in "biuf":
        return _compare_exact(name, np.asarray(reference), np.asarray(output))
    ref = np.asarray(reference, np.float64).ravel()
    out = np.asarray(output, np.float64).ravel()
    finite_ref, finite_out = np.isfinite(ref), np.isfinite(out)
    both = finite_ref & finite_out
    # inf against the same inf, and NaN against NaN in the same place, are
    # agreement (the rewrite changed nothing there: a NaN of the inputs both
    # runs carry); a number where the reference has NaN is the reference's
    # failure, not the output's (original_nan).
    same_special = (~finite_ref & ~finite_out) & ((ref == out) | (np.isnan(ref) & np.isnan(out)))
    original_nan = np.isnan(ref) & finite_out
    if not excuse_nan or not both.any():  # a NaN of the inputs lost, or nothing else to compare
        original_nan[:] = False
    mismatch = int(np.count_nonzero(~both & ~same_special & ~original_nan))
    if mismatch:
        max_abs = max_rel = math.inf
    elif both.any():
        diff = np.abs(ref[both] - out[both])
        mag = np.abs(ref[both])
        floor = max(REL_FLOOR * float(mag.max()), np.finfo(np.float64).tiny)
        max_abs = float(diff.max())
        max_rel = float((diff / np.maximum(mag, floor)).max())
    else:
        max_abs = max_rel = 0.0
    cosine = _cosine(ref[both], out[both]) if not mismatch else math.nan
    is_scores = looks_like_scores(name, reference.shape, reference.dtype) if scores is None else scores
    metrics = OutputMetrics(
        name, list(reference.shape), str(reference.dtype), max_abs, max_rel, cosine, mismatch, is_scores
    )
    metrics.original_nan = int(np.count_nonzero(original_nan))
    metrics.compared = int(np.count_nonzero(both | (same_special & ~np.isnan(ref))))
    if is_scores:
        classes = reference.shape[-1]
        k = max(1, min(top_k, classes))
        r2 = np.asarray(reference, np.float64).reshape(-1, classes)
        o2 = np.asarray(output, np.float64).reshape(-1, classes)
        # The original's NaN rows have no argmax: nothing to agree with (an all-NaN row
        # once "agreed" with a row of zeros, both argmax 0). A NaN row of the output
        # where the original has numbers agrees with nothing.
        excused = np.isnan(r2).any(axis=1)
        r2, o2 = r2[~excused], o2[~excused]
        lost = np.isnan(o2).any(axis=1)
        metrics.k, metrics.rows = k, int(r2.shape[0])
        if metrics.rows:  # no rows (an empty output): no agreement to measure, left None
            metrics.top1_agreement = float(np.mean((np.argmax(r2, -1) == np.argmax(o2, -1)) & ~lost))
            top_r = np.argsort(-r2, axis=-1, kind="stable")[:, :k]
            top_o = np.argsort(-o2, axis=-1, kind="stable")[:, :k]
            overlap = [
                0.0 if bad else len(set(a) & set(b)) / k for a, b, bad in zip(top_r.tolist(), top_o.tolist(), lost)
            ]
            metrics.topk_agreement = float(np.mean(overlap))
    return metrics


def _compare_exact(name: str, reference: np.ndarray, output: np.ndarray) -> OutputMetrics:
    """Strings and other non-numeric outputs: equal, or as far apart as can be."""
    same = reference.size == 0 or bool(np.all(reference == output))
    return OutputMetrics(
        name,
        list(reference.shape),
        str(reference.dtype),
        0.0 if same else math.inf,
        0.0 if same else math.inf,
        1.0 if same else 0.0,
        0,
        False,
        compared=int(reference.size),
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def merge(runs: list[OutputMetrics]) -> OutputMetrics:
    """One output over several input sets: the worst error and cosine, the
    agreements pooled over all rows."""
    first = runs[0]
    if len(runs) == 1:
        return first
    merged = OutputMetrics(
        first.name,
        first.shape,
        first.dtype,
        max(r.max_abs_error for r in runs),
        max(r.max_rel_error for r in runs),
        min(r.cosine for r in runs) if not any(math.isnan(r.cosine) for r in runs) else math.nan,
        sum(r.nonfinite_mismatch for r in runs),
        first.scores,
        original_nan=sum(r.original_nan for r in runs),
        compared=sum(r.compared for r in runs),
    )
    if first.scores:
        rows = sum(r.rows or 0 for r in runs)
        if rows:  # input sets whose output is empty add no rows; all empty: None, as in compare
            merged.top1_agreement = sum((r.top1_agreement or 0) * (r.rows or 0) for r in runs) / rows
            merged.topk_agreement = sum((r.topk_agreement or 0) * (r.rows or 0) for r in runs) / rows
        merged.k, merged.rows = first.k, rows
    return merged
