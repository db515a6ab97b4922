"""What `quake-onnx tune` chooses between: model configurations, groups of
candidate nodes, the choice for each group, and the variants they make."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from ..check.runner import Thresholds, judge, summarize

ORDERS = (1, 2, 3)
EXAQ_BITS = (2, 3, 4)  # tried with --allow-exaq, fewest first: the first within tolerance is the exaq choice
ATTENTION_RULES = frozenset({"attention", "mha", "onnx_attention"})  # the rules that fuse com.quake Attention
# tune's attention_precision: "auto" tries bfloat16 where the CPU has a bf16 engine, the others only theirs
ATTENTION_PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class Config:
    """What applies to the whole model: how far ONNX Runtime optimises first
    (optimize's ort_level), whether the fusing rules run and, with attention
    fused, its precision (bf16: com.quake Attention's precision "bfloat16",
    tried only where the CPU has a bf16 engine). None: the model has no block
    that rule fuses, so there is nothing to switch."""

    level: str = "extended"
    attention: Optional[bool] = None  # com.quake Attention for every block the rule takes (break-even floor 0)
    glu: Optional[bool] = None  # com.quake Glu for gated MLPs
    bf16: bool = False  # the fused attention's Q·Kᵀ and P·V tiles in bf16 (only with attention True)

    @property
    def precision(self) -> Optional[str]:
        """The fused attention's precision, None when attention is not fused."""
        return ("bfloat16" if self.bf16 else "float32") if self.attention else None

    def text(self) -> str:
        parts = [f"ORT level {self.level}"]
        if self.attention is not None:
            fused = "attention fused" + (" (bfloat16)" if self.bf16 else "")
            parts.append(fused if self.attention else "attention not fused")
        if self.glu is not None:
            parts.append("glu fused" if self.glu else "glu not fused")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {
            "ort_level": self.level,
            "attention": self.attention,
            "attention_precision": self.precision,
            "glu": self.glu,
        }

    @staticmethod
    def from_dict(d: dict) -> "Config":
        return Config(d["ort_level"], d["attention"], d["glu"], d.get("attention_precision") == "bfloat16")


@dataclass(frozen=True)
class Choice:
    """How a group is replaced: the order of its com.quake nodes and, for a
    Softmax, the method (exaq with its bits)."""

    order: int
    method: str = "quake"
    bits: Optional[int] = None

    def text(self) -> str:
        return f"exaq {self.bits} bits" if self.method == "exaq" else f"order {self.order}"


@dataclass
class Group:
    """Candidate nodes of the same rule, op and input shape in the same graph:
    they are decided together, which keeps the number of runs small. `nodes`
    holds the anchor node names per configuration (ORT's graph at level "all"
    names some nodes differently)."""

    key: str
    rule: str
    op_type: str
    graph: str
    shape: Optional[list]  # the anchor's input shape (sizes, symbolic names, "?"), None when unknown
    nodes: dict = field(default_factory=dict)  # Config -> [anchor node name]

    @property
    def elements(self) -> Optional[int]:
        if self.shape is None or not all(isinstance(d, int) and d > 0 for d in self.shape):
            return None
        return math.prod(self.shape)

    @property
    def exaq_possible(self) -> bool:
        return self.rule == "softmax"

    @property
    def attention(self) -> bool:
        """A fused attention block (com.quake Attention): its precision is the configuration's."""
        return self.rule in ATTENTION_RULES

    def text(self) -> str:
        shape = "?" if self.shape is None else "[" + ",".join(str(d) for d in self.shape) + "]"
        where = "" if self.graph == "main" else f" in {self.graph}"
        count = max((len(v) for v in self.nodes.values()), default=0)
        return f"{self.rule} {self.op_type} {shape}{where} x{count}"

    def weight(self) -> float:
        """Work per model run, to try the biggest groups first (symbolic shapes count as big)."""
        count = max((len(v) for v in self.nodes.values()), default=0)
        return (self.elements if self.elements is not None else 1e12) * count


@dataclass(frozen=True)
class Variant:
    """A model to build and measure: a configuration and the choice of each
    replaced group (the others are left to ONNX Runtime). No picks is the
    original model, whatever the configuration."""

    config: Optional[Config]
    picks: tuple = ()  # sorted (group key, Choice) pairs

    @staticmethod
    def of(config: Config, picks: dict) -> "Variant":
        if not picks:
            return ORIGINAL
        return Variant(config, tuple(sorted(picks.items())))

    @property
    def is_original(self) -> bool:
        return not self.picks

    def as_dict(self) -> dict:
        return dict(self.picks)

    def without(self, key: str) -> "Variant":
        picks = self.as_dict()
        picks.pop(key, None)
        return Variant.of(self.config, picks)

    def with_choice(self, key: str, choice: Choice) -> "Variant":
        picks = self.as_dict()
        picks[key] = choice
        return Variant.of(self.config, picks)

    def text(self) -> str:
        if self.is_original:
            return "the original"
        return f"{self.config.text()}: " + ", ".join(f"{k} {c.text()}" for k, c in self.picks)


ORIGINAL = Variant(None, ())


def failed_run(outputs: Optional[list]) -> Optional[str]:
    """Why the variant gave no outputs (bench.failed), or None when it ran."""
    return outputs[0]["failed"] if outputs and "failed" in outputs[0] else None


def error_summary(outputs: Optional[list]) -> Optional[dict]:
    """The worst figures over the outputs (check's summary); None for a variant that did not run."""
    return None if outputs is None or failed_run(outputs) else summarize(outputs)


def within(outputs: list[dict], thresholds: Thresholds) -> bool:
    """Every output meets the accuracy thresholds, as `check` judges them."""
    return not failures(outputs, thresholds)


def failures(outputs: list[dict], thresholds: Thresholds) -> list[str]:
    why = failed_run(outputs)
    if why:
        return [why]
    return judge({"summary": summarize(outputs), "outputs": outputs}, thresholds.accuracy_only())


def badness(outputs: list[dict], thresholds: Thresholds) -> float:
    """How far the outputs are from the tolerance, as a share of it (1 = at
    the limit; inf for non-finite mismatches): picks the group to raise when
    a combination fails as a whole."""
    if failed_run(outputs):
        return math.inf
    s = summarize(outputs)
    if s["nonfinite_mismatch"]:
        return math.inf

    def num(v):
        return math.inf if v in ("inf", "nan") else v

    worst = 0.0
    t = thresholds
    if t.max_abs_error is not None and s["max_abs_error"] is not None:
        worst = max(worst, num(s["max_abs_error"]) / max(t.max_abs_error, 1e-300))
    if t.min_cosine is not None and s["min_cosine"] is not None:
        cos = s["min_cosine"]
        worst = max(worst, math.inf if cos == "nan" else (1.0 - cos) / max(1.0 - t.min_cosine, 1e-300))
    if t.min_top1_agreement is not None and s["min_top1_agreement"] is not None:
        worst = max(worst, (1.0 - s["min_top1_agreement"]) / max(1.0 - t.min_top1_agreement, 1e-300))
    return worst
