"""What a rewrite pass did, node by node: the data behind --explain and --report."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Decision:
    """One candidate node (or matched subgraph) and what the pass did with it."""

    node: str  # the anchor node's name (the Softmax, the Erf of an erf-GELU), or "(unnamed, output y)"
    op_type: str  # its op type, domain-qualified when not the default domain ("com.microsoft.FastGelu")
    rule: str  # the rule that looked at it ("softmax", "erf_gelu", ...)
    replaced: bool
    reason: str  # why it was replaced ("replaced by com.quake Gelu (bias fused)") or why not
    graph: str = "main"  # "main", or the subgraph path ("main/If_3.then_branch")


@dataclass
class Report:
    decisions: list[Decision] = field(default_factory=list)
    # Things the user should know that are not about one node (e.g. ONNX
    # Runtime's fusions failed and the original graph was rewritten).
    warnings: list[str] = field(default_factory=list)

    def add(self, decision: Decision) -> None:
        self.decisions.append(decision)

    @property
    def replaced(self) -> list[Decision]:
        return [d for d in self.decisions if d.replaced]

    @property
    def skipped(self) -> list[Decision]:
        return [d for d in self.decisions if not d.replaced]

    def counts(self) -> dict[str, int]:
        """Replacements per rule."""
        return dict(Counter(d.rule for d in self.replaced))

    def to_dict(self) -> dict:
        return {
            "replaced": len(self.replaced),
            "skipped": len(self.skipped),
            "per_rule": self.counts(),
            "decisions": [asdict(d) for d in self.decisions],
            "warnings": list(self.warnings),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
