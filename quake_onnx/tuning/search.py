"""The decisions of `quake-onnx tune`: accuracy first, then speed, within a
time budget. Everything measured goes through a Bench (bench.py runs the
models; the tests inject one with made-up errors and timings), and every
step's cost is asked first, so the search stops before the budget is spent.

1. Accuracy, one group at a time: each group alone replaced at order 1, 2,
   3 (the first within tolerance is the group's order; with --allow-exaq a
   Softmax group then tries exaq at 2, 3, 4 bits). A group outside the
   tolerance even at order 3 stays with ONNX Runtime. Where the CPU has a
   bf16 engine, an accurate fused attention group then tries precision
   bfloat16 alone at its order: only within tolerance does it go into the
   bfloat16 configurations. Where fused attention is tried at bfloat16
   only (attention_precision "bfloat16"), its orders are tried at bfloat16.
2. Per configuration (ORT level, attention and glu fusion on or off, the
   fused attention's precision), the cheapest combination: every accurate group at its order, checked as a
   whole; while it misses the tolerance, the group furthest from it alone
   goes up an order (or out, from order 3). The combination is then timed
   against the original (paired rounds); the configuration with the best
   median goes on.
3. Speed, one group at a time within it, biggest first: the model without the
   group against the model with it. The group stays only when its gain is
   beyond the round-to-round spread (the lower quartile of the paired ratios
   above 1). The groups dropped this way are then timed together against
   the combination: if together they are faster beyond the spread, they all
   stay. A Softmax group with an exaq choice then tries it the same way.
4. The final model against the original, paired again. Unless it is faster
   beyond the spread, the result is the original.

When the budget would not hold a step and still leave room for step 4, the
step is not taken and the report says so; the result is the best measured so
far."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

from ..check.paired import Paired
from ..check.runner import Thresholds
from .space import EXAQ_BITS, ORDERS, ORIGINAL, Choice, Config, Group, Variant, badness, failures, within


class Bench(Protocol):
    """What the search measures with. `paired(base, variant)` gives the
    per-round ratios time(base) / time(variant) (above 1: variant faster);
    `errors(variant)` the per-output comparison with the original (check's
    output dicts). The costs are the seconds a call is expected to take;
    None stands for a variant not built yet."""

    def errors(self, variant: Variant) -> list[dict]: ...

    def paired(self, base: Variant, variant: Variant) -> Paired: ...

    def cost_errors(self, variant: Optional[Variant]) -> float: ...

    def cost_paired(self, base: Variant, variant: Optional[Variant]) -> float: ...


class Budget:
    """Seconds allowed from `started` (clock's time), on `clock`."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic, started: Optional[float] = None):
        self.seconds = seconds
        self.clock = clock
        self.started = clock() if started is None else started

    def elapsed(self) -> float:
        return self.clock() - self.started

    def fits(self, cost: float, reserve: float = 0.0) -> bool:
        return self.elapsed() + cost + reserve <= self.seconds


@dataclass
class GroupResult:
    group: Group
    tried: list = field(default_factory=list)  # (Choice, outputs) alone, in the order tried
    accurate: Optional[Choice] = None  # the cheapest quake order within tolerance alone
    bf16: Optional[list] = None  # a fused attention group's outputs alone at `accurate` in precision bfloat16
    bf16_within: bool = False  # ...within tolerance
    bf16_only: bool = False  # a fused attention group tried at bfloat16 only: `tried` is at bfloat16
    exaq: Optional[Choice] = None  # the fewest exaq bits within tolerance alone
    speedup: Optional[Paired] = None  # the model with it over the model without it
    choice: Optional[Choice] = None  # in the result
    reason: str = ""

    def outputs_for(self, choice: Optional[Choice]) -> Optional[list]:
        for c, outs in self.tried:
            if c == choice:
                return outs
        return None


@dataclass
class ConfigResult:
    config: Config
    status: str = "not tried"  # measured, not tried, nothing to replace
    reason: str = ""
    variant: Optional[Variant] = None
    outputs: Optional[list] = None  # the combination's errors as a whole
    speedup: Optional[Paired] = None  # over the original


@dataclass
class Outcome:
    variant: Variant  # ORIGINAL when the original is the result
    speedup: Optional[Paired]  # of `variant` over the original (None: nothing measured)
    outputs: Optional[list]  # `variant`'s errors (None for the original)
    reason: str  # why the result is what it is
    chosen: Optional[ConfigResult]
    groups: dict  # key -> GroupResult
    configs: list  # ConfigResult, in the order tried
    not_tried: list  # what the budget left out, one phrase each
    budget_exhausted: bool


class Search:
    def __init__(
        self,
        groups: list[Group],
        configs: list[Config],
        bench: Bench,
        thresholds: Thresholds,
        budget: Budget,
        *,
        allow_exaq: bool = False,
        progress: Callable[[str], None] = lambda step: None,
    ):
        self.groups = {g.key: g for g in groups}
        self.configs = configs
        self.bench = bench
        self.thresholds = thresholds
        self.budget = budget
        self.allow_exaq = allow_exaq
        self.progress = progress
        self.results = {g.key: GroupResult(g) for g in groups}
        self.config_results: list[ConfigResult] = []
        self.not_tried: list[str] = []
        self.exhausted = False
        self._errors: dict = {}  # Variant -> outputs
        self._paired: dict = {}  # (base, variant) -> Paired

    # ------------------------------------------------------------------ costs

    def _reserve(self) -> float:
        """What the final comparison needs: a model not built yet, checked and timed against the original."""
        return self.bench.cost_errors(None) + self.bench.cost_paired(ORIGINAL, None)

    def _affordable(self, cost: float, what: str, final: bool = False) -> bool:
        if self.budget.fits(cost, 0.0 if final else self._reserve()):
            return True
        self.exhausted = True
        self.not_tried.append(what)
        return False

    def estimate(self) -> float:
        """Seconds the whole search is expected to take (the plan, before any step)."""
        new_errors = self.bench.cost_errors(None)
        new_paired = self.bench.cost_paired(ORIGINAL, None)
        accuracy = sum(
            1.5
            + (1 if self.allow_exaq and g.exaq_possible else 0)
            + (1 if g.attention and any(c in g.nodes for c in self.configs) and self._bf16_home(g) else 0)
            for g in self.groups.values()
        )
        per_config = len(self.configs) * (new_errors + new_paired)
        groups_in_best = max((sum(1 for g in self.groups.values() if c in g.nodes) for c in self.configs), default=0)
        return accuracy * new_errors + per_config + groups_in_best * new_paired + new_errors + new_paired

    # ------------------------------------------------------------------ measuring

    def _measure_errors(self, variant: Variant) -> list:
        if variant not in self._errors:
            self._errors[variant] = self.bench.errors(variant)
        return self._errors[variant]

    def _measure_paired(self, base: Variant, variant: Variant, fresh: bool = False) -> Paired:
        key = (base, variant)
        if not fresh:
            if key in self._paired:
                return self._paired[key]
            if (variant, base) in self._paired:
                return self._paired[(variant, base)].inverse()
        p = self.bench.paired(base, variant)
        self._paired[key] = p
        return p

    def _known_paired(self, base: Variant, variant: Variant) -> Optional[Paired]:
        if (base, variant) in self._paired:
            return self._paired[(base, variant)]
        if (variant, base) in self._paired:
            return self._paired[(variant, base)].inverse()
        return None

    # ------------------------------------------------------------------ the steps

    def run(self) -> Outcome:
        self._accuracy()
        best = self._configurations()
        current = self._ablate(best) if best is not None else ORIGINAL
        return self._final(current, best)

    def _by_weight(self, keys) -> list[str]:
        return sorted(keys, key=lambda k: (-self.groups[k].weight(), k))

    def _home(self, group: Group) -> Config:
        """The configuration a group is measured alone in: the first that has it (float32 first)."""
        return min((c for c in self.configs if c in group.nodes), key=lambda c: c.bf16)

    def _bf16_home(self, group: Group) -> Optional[Config]:
        """The bfloat16 twin of the group's home, when the search has it (and the home is float32)."""
        home = self._home(group)
        twin = Config(home.level, home.attention, home.glu, True)
        return twin if group.attention and not home.bf16 and twin in self.configs and twin in group.nodes else None

    def _in(self, cfg: Config, key: str) -> bool:
        """The group can be replaced in the configuration: it has nodes there and
        is within tolerance alone (in a bfloat16 configuration, at bfloat16 too)."""
        g, r = self.groups[key], self.results[key]
        if cfg not in g.nodes or r.accurate is None:
            return False
        return r.bf16_within or not (cfg.bf16 and g.attention)

    def _accuracy(self) -> None:
        for key in self._by_weight(self.groups):
            g, r = self.groups[key], self.results[key]
            if not any(c in g.nodes for c in self.configs):
                r.reason = "kept: in no configuration tuned"
                continue
            home = self._home(g)
            r.bf16_only = home.bf16 and g.attention
            at = " (bfloat16)" if r.bf16_only else ""
            for order in ORDERS:
                choice = Choice(order)
                variant = Variant.of(home, {key: choice})
                self.progress(f"accuracy: {g.text()} at {choice.text()}{at}")
                if not self._affordable(
                    self.bench.cost_errors(variant), f"accuracy of {g.text()} at {choice.text()}{at}"
                ):
                    r.reason = "kept: not tried (the budget ran out before its accuracy was measured)"
                    break
                outs = self._measure_errors(variant)
                r.tried.append((choice, outs))
                if within(outs, self.thresholds):
                    r.accurate = choice
                    if r.bf16_only:
                        r.bf16, r.bf16_within = outs, True
                    break
            else:
                miss = "; ".join(failures(r.tried[-1][1], self.thresholds))
                r.reason = f"kept: replaced alone at order 3{at} it misses the tolerance ({miss})"
            if r.accurate is not None and self.allow_exaq and g.exaq_possible:
                for bits in EXAQ_BITS:
                    choice = Choice(r.accurate.order, "exaq", bits)
                    variant = Variant.of(home, {key: choice})
                    self.progress(f"accuracy: {g.text()} at {choice.text()}")
                    if not self._affordable(
                        self.bench.cost_errors(variant), f"accuracy of {g.text()} at {choice.text()}"
                    ):
                        break
                    outs = self._measure_errors(variant)
                    r.tried.append((choice, outs))
                    if within(outs, self.thresholds):
                        r.exaq = choice
                        break
            twin = self._bf16_home(g) if r.accurate is not None else None
            if twin is not None:
                variant = Variant.of(twin, {key: r.accurate})
                what = f"accuracy of {g.text()} at {r.accurate.text()} in bfloat16"
                self.progress(f"accuracy: {g.text()} at {r.accurate.text()}, bfloat16")
                if self._affordable(self.bench.cost_errors(variant), what):
                    r.bf16 = self._measure_errors(variant)
                    r.bf16_within = within(r.bf16, self.thresholds)

    def _alone_badness(self, key: str, raises: int, cfg: Config) -> float:
        r = self.results[key]
        outs = r.bf16 if cfg.bf16 and self.groups[key].attention else r.outputs_for(r.accurate)
        b = badness(outs, self.thresholds) if outs is not None else 1.0
        return b / (10.0**raises)  # each order divides the exponential's error by about ten (docs/ops.md)

    def _combination(self, result: ConfigResult) -> Optional[dict]:
        """The cheapest picks of a configuration within tolerance as a whole;
        None when the budget stopped it, {} when nothing is left."""
        cfg = result.config
        picks = {k: self.results[k].accurate for k in self._by_weight(self.groups) if self._in(cfg, k)}
        raises = dict.fromkeys(picks, 0)
        while picks:
            variant = Variant.of(cfg, picks)
            self.progress(f"accuracy: {cfg.text()}, the combination")
            if not self._affordable(self.bench.cost_errors(variant), f"{cfg.text()}: the combination's accuracy"):
                result.reason = "not tried: the budget ran out"
                return None
            outs = self._measure_errors(variant)
            result.outputs = outs
            if within(outs, self.thresholds):
                return picks
            key = max(picks, key=lambda k: self._alone_badness(k, raises[k], cfg))
            if picks[key].order < ORDERS[-1]:
                picks[key] = Choice(picks[key].order + 1)
                raises[key] += 1
            else:
                del picks[key]
        result.reason = "no combination within tolerance"
        return {}

    def _configurations(self) -> Optional[ConfigResult]:
        best: Optional[ConfigResult] = None
        for cfg in self.configs:
            result = ConfigResult(cfg)
            self.config_results.append(result)
            if cfg.bf16 and not any(self.groups[k].attention and self._in(cfg, k) for k in self.groups):
                result.status = "nothing to replace"
                result.reason = "no attention group is within tolerance alone at bfloat16"
                continue
            if not any(self._in(cfg, k) for k in self.groups):
                result.status, result.reason = "nothing to replace", "no group of it is within tolerance alone"
                continue
            picks = self._combination(result)
            if picks is None:
                continue
            if not picks:
                result.status = "nothing to replace"
                continue
            if cfg.bf16 and not any(self.groups[k].attention for k in picks):
                result.status = "nothing to replace"
                result.reason = "no combination with bfloat16 attention is within tolerance"
                continue
            variant = Variant.of(cfg, picks)
            result.variant = variant
            self.progress(f"speed: {cfg.text()} against the original")
            if not self._affordable(self.bench.cost_paired(ORIGINAL, variant), f"{cfg.text()}: speed"):
                result.reason = "not tried: the budget ran out"
                continue
            result.speedup = self._measure_paired(ORIGINAL, variant)
            result.status = "measured"
            if best is None or result.speedup.median > best.speedup.median:
                best = result
        return best

    def _ablate(self, best: ConfigResult) -> Variant:
        current = best.variant
        for key in self._by_weight(k for k, _ in best.variant.picks):
            g, r = self.groups[key], self.results[key]
            without = current.without(key)
            p = self._known_paired(without, current)
            if p is None:
                self.progress(f"speed: {g.text()}")
                if not self._affordable(self.bench.cost_paired(without, current), f"speed of {g.text()} alone"):
                    continue  # kept as measured with the others
                p = self._measure_paired(without, current)
            r.speedup = p
            if not p.faster:
                r.reason = f"kept: its gain {p.text()} is not beyond the round-to-round spread"
                current = without
                if current.is_original:
                    break
        current = self._dropped_together(best.variant, current)
        if current.is_original:
            return current
        for key, choice in list(current.picks):
            r = self.results[key]
            if r.exaq is None or choice.order != r.exaq.order:
                continue
            alt = current.with_choice(key, r.exaq)
            what = f"speed of {self.groups[key].text()} at {r.exaq.text()}"
            cost = self.bench.cost_errors(alt) + self.bench.cost_paired(current, alt)
            self.progress(what)
            if not self._affordable(cost, what):
                continue
            if not within(self._measure_errors(alt), self.thresholds):
                continue
            p = self._measure_paired(current, alt)
            if p.faster:
                current = alt
        return current

    def _dropped_together(self, whole: Variant, ablated: Variant) -> Variant:
        """`ablated` unless the groups dropped from `whole`, each inside the spread
        alone, are together faster beyond it (ConvNeXt's four GELU shapes: each
        stage's gain is below the noise, their sum is 1.06x): then `whole`."""
        if ablated == whole:
            return ablated
        p = self._known_paired(ablated, whole)
        what = "the dropped groups together"
        if p is None and self._affordable(self.bench.cost_paired(ablated, whole), what):
            self.progress(f"speed: {what}")
            p = self._measure_paired(ablated, whole)
        if p is None or not p.faster:
            return ablated
        dropped = {k for k, _ in whole.picks} - {k for k, _ in ablated.picks}
        for key in dropped:
            self.results[key].reason = ""  # replaced after all: _settle says so
        return whole

    def _final(self, current: Variant, best: Optional[ConfigResult]) -> Outcome:
        chosen = best
        speedup: Optional[Paired] = None
        outputs: Optional[list] = None
        reason = ""
        if current.is_original:
            if best is not None:
                reason = "no group's gain is beyond the round-to-round spread"
            elif not self.results:
                reason = "the model has no candidate node"
            elif self.exhausted:
                reason = "the budget ran out before any combination was measured"
            elif not any(r.accurate for r in self.results.values()):
                reason = "no group is within tolerance"
            else:
                reason = "no combination is within tolerance"
        else:
            if current not in self._errors and not self._affordable(
                self.bench.cost_errors(current), "the final model's accuracy", final=True
            ):
                current = best.variant  # its errors are known
            outputs = self._measure_errors(current)
            if not within(outputs, self.thresholds):  # dropping groups made it worse: back to the combination
                current = best.variant
                outputs = self._measure_errors(current)
            self.progress("speed: the final model against the original")
            if self._affordable(self.bench.cost_paired(ORIGINAL, current), "the final comparison", final=True):
                speedup = self._measure_paired(ORIGINAL, current, fresh=True)
            else:
                speedup = self._known_paired(ORIGINAL, current)
                if speedup is None:
                    current, outputs = best.variant, best.outputs
                    speedup = best.speedup
                    self.not_tried.append("the final model: the result is the best configuration as measured")
                else:
                    self.not_tried.append("a fresh final comparison: the result's figure is from its first measurement")
            if not speedup.faster:
                reason = (
                    "the tuned model is not faster than the original beyond the round-to-round spread "
                    f"({speedup.text()})"
                )
                current = ORIGINAL
            else:
                reason = f"faster than the original: {speedup.text()}"
        self._settle(current, chosen, reason)
        return Outcome(
            variant=current,
            speedup=speedup,
            outputs=outputs if not current.is_original else None,
            reason=reason,
            chosen=chosen,
            groups=self.results,
            configs=self.config_results,
            not_tried=self.not_tried,
            budget_exhausted=self.exhausted,
        )

    def _settle(self, result: Variant, chosen: Optional[ConfigResult], reason: str) -> None:
        """Each group's choice in the result and, when kept, why."""
        picks = result.as_dict()
        combo = chosen.variant.as_dict() if chosen is not None and chosen.variant is not None else {}
        for key, r in self.results.items():
            r.choice = picks.get(key)
            if r.choice is not None:
                bf16 = ", bfloat16" if result.config.bf16 and r.group.attention else ""
                r.reason = f"replaced ({r.choice.text()}{bf16})"
                continue
            if r.reason:
                continue
            g = r.group
            if r.accurate is None:
                r.reason = "kept: not tried"
            elif chosen is None or chosen.config not in g.nodes:
                r.reason = "kept: not in the chosen configuration"
            elif chosen.config.bf16 and g.attention and not r.bf16_within:
                tried = r.bf16 is not None
                r.reason = "kept: at bfloat16 alone it misses the tolerance" if tried else "kept: not tried at bfloat16"
            elif key not in combo:
                r.reason = "kept: with the other groups replaced the model misses the tolerance"
            elif result.is_original:
                r.reason = f"kept: the result is the original ({reason})"
            else:
                r.reason = "kept"
