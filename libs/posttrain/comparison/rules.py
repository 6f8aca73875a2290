"""The decision framework as data: which measured numbers decide which method and which
way of serving, with what thresholds (rules.yaml beside this file is the shipped set).

A rule set has method rules and serving rules, each an ordered list; the first rule
whose every condition holds fires. A condition names a measure (MEASURES: a number
computed from the candidates' measurements and the declared context), an operator and
a threshold. A condition on a number that was not measured does not hold. A rule with
no conditions always fires (a fallback). load_rules() refuses a bad file with every
problem named by its place, e.g. `method_rules[2].when[0].measure`.
"""

from __future__ import annotations

import operator
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from posttrain.comparison.measurements import (
    FAMILIES,
    MEASURED,
    STARTS_AS_BASE,
    CandidateMeasurement,
    DecisionContext,
)

DEFAULT_RULES_PATH = Path(__file__).with_name("rules.yaml")
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
SERVING_MODES = ("merged", "adapter")
COST_MEASURES = ("wall_time_s", "train_tokens", "peak_memory_bytes", "trainable_params")


@dataclass(frozen=True)
class RuleViolation:
    field: str  # dotted path in the rules file, e.g. method_rules[2].when[0].value
    message: str

    def describe(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class RuleError(ValueError):
    """A rules file that can't be used; `violations` name every problem and where."""

    def __init__(self, violations: Sequence[RuleViolation]) -> None:
        self.violations = tuple(violations)
        super().__init__("; ".join(v.describe() for v in self.violations))


@dataclass(frozen=True)
class Condition:
    measure: str
    op: str
    value: float

    def text(self) -> str:
        return f"{self.measure} {self.op} {self.value:g}"


@dataclass(frozen=True)
class Rule:
    name: str
    recommend: str  # method rules: a family (FAMILIES); serving rules: merged | adapter
    why: str
    when: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class RuleSet:
    quality_metric: str = "pass_rate"  # suite metric that ranks quality (higher is better)
    cost_measure: str = "wall_time_s"  # training cost on the Pareto chart
    prefer_gate_pass: bool = True  # within a family, a candidate that passed the gate first
    method_rules: tuple[Rule, ...] = ()
    serving_rules: tuple[Rule, ...] = ()
    source: str = ""  # where the rules came from, for the report


# ------------------------------------------------------------------ measures


@dataclass
class Subject:
    """What measures are computed from: the candidates, the context, the rule set's
    quality metric, and (for serving rules) the candidate the method rules chose."""

    candidates: Sequence[CandidateMeasurement]
    context: DecisionContext
    quality_metric: str
    chosen: CandidateMeasurement | None = None

    def measured(self, family: str = "any") -> list[CandidateMeasurement]:
        return [
            c for c in self.candidates if c.outcome == MEASURED and c.method in FAMILIES[family]
        ]

    def best_quality(self, family: str = "any") -> float | None:
        values = [
            q for c in self.measured(family) if (q := c.quality_of(self.quality_metric)) is not None
        ]
        return max(values) if values else None


def _gap(s: Subject, family: str) -> float | None:
    best, fam = s.best_quality(), s.best_quality(family)
    return None if best is None or fam is None else best - fam


def _full_gain(s: Subject) -> float | None:
    full = s.best_quality("full")
    peft = [
        q
        for c in s.measured()
        if c.method != "full" and (q := c.quality_of(s.quality_metric)) is not None
    ]
    return None if full is None or not peft else full - max(peft)


def _full_budget_share(s: Subject) -> float | None:
    times = [c.wall_time_s for c in s.measured("full") if c.wall_time_s is not None]
    if not times or s.context.budget_candidate_wall_s <= 0:
        return None
    return min(times) / s.context.budget_candidate_wall_s


def _behaviour_shift(s: Subject) -> float | None:
    losses = [c.first_loss for c in s.candidates if c.method in STARTS_AS_BASE and c.first_loss]
    return statistics.median(losses) if losses else None


def _lora_time_share(s: Subject) -> float | None:
    lora = [c.wall_time_s for c in s.measured("lora") if c.wall_time_s]
    every = [c.wall_time_s for c in s.measured() if c.wall_time_s]
    return None if not lora or not every else min(lora) / max(every)


def _chosen(fn: Callable[[CandidateMeasurement], float | None]) -> Callable[[Subject], Any]:
    return lambda s: None if s.chosen is None else fn(s.chosen)


def _adapter_overhead(c: CandidateMeasurement) -> float | None:
    adapter, merged = c.served_p50_ms("adapter"), c.served_p50_ms("merged")
    return None if adapter is None or not merged else adapter / merged


def _budget_ratio(s: Subject, mode: str) -> float | None:
    served = None if s.chosen is None else s.chosen.served_p50_ms(mode)
    budget = s.context.latency_budget_ms
    return None if served is None or not budget else served / budget


@dataclass(frozen=True)
class Measure:
    description: str
    compute: Callable[[Subject], float | None]


MEASURES: dict[str, Measure] = {
    "data_rows": Measure(
        "rows in the training dataset version", lambda s: float(s.context.data_rows)
    ),
    "behaviour_shift": Measure(
        "how far the data is from what the base does: the base model's training loss at "
        "step 1 (median over the full/LoRA/QLoRA/IA3 candidates, which start as the base)",
        _behaviour_shift,
    ),
    "full_quality_gain": Measure(
        "best full fine-tuning quality minus the best parameter-efficient candidate's",
        _full_gain,
    ),
    "full_budget_share": Measure(
        "training time of the full fine-tuning candidate / the per-candidate time budget",
        _full_budget_share,
    ),
    "lora_quality_gap": Measure(
        "best quality minus the best LoRA/QLoRA candidate's", lambda s: _gap(s, "lora")
    ),
    "lora_time_share": Measure(
        "training time of the fastest LoRA/QLoRA candidate / the slowest candidate's",
        _lora_time_share,
    ),
    "prompt_quality_gap": Measure(
        "best quality minus the best prompt/prefix tuning candidate's",
        lambda s: _gap(s, "prompt"),
    ),
    "best_quality": Measure("the best candidate's quality metric", lambda s: s.best_quality()),
    "tenants": Measure(
        "tenants that will share one base model (declared)", lambda s: float(s.context.tenants)
    ),
    "fast_rollback": Measure(
        "1 when rollback must be a routing change (declared), else 0",
        lambda s: float(s.context.fast_rollback),
    ),
    "latency_budget_ms": Measure(
        "the p50 latency the serving stack must meet (declared; not measured when 0)",
        lambda s: s.context.latency_budget_ms or None,
    ),
    "chosen_latency_p50_ms": Measure(
        "the recommended candidate's p50 latency on the suite (the evaluator's latency metric)",
        _chosen(lambda c: None if c.latency_p50_s is None else c.latency_p50_s * 1000),
    ),
    "chosen_adapter_p50_ms": Measure(
        "the recommended candidate's p50 latency served through Triton as an adapter on its "
        "base, one request at a time (the evaluator's serving probe)",
        _chosen(lambda c: c.served_p50_ms("adapter")),
    ),
    "chosen_merged_p50_ms": Measure(
        "the same, served merged into one model",
        _chosen(lambda c: c.served_p50_ms("merged")),
    ),
    "chosen_adapter_overhead": Measure(
        "served p50 as an adapter / served p50 merged, for the recommended candidate",
        _chosen(_adapter_overhead),
    ),
    "adapter_budget_ratio": Measure(
        "the recommended candidate's served adapter p50 / the declared latency budget",
        lambda s: _budget_ratio(s, "adapter"),
    ),
    "merged_budget_ratio": Measure(
        "its served merged p50 / the declared latency budget",
        lambda s: _budget_ratio(s, "merged"),
    ),
    "chosen_can_merge": Measure(
        "1 when the recommended candidate's adapter can be merged into the base, else 0",
        _chosen(lambda c: float(c.can_merge)),
    ),
    "chosen_is_full": Measure(
        "1 when the recommended candidate is a full fine-tune (a whole model), else 0",
        _chosen(lambda c: float(c.method == "full")),
    ),
}


# ------------------------------------------------------------------ loading


def default_rules() -> RuleSet:
    return load_rules(DEFAULT_RULES_PATH.read_text(), source=str(DEFAULT_RULES_PATH.name))


def load_rules(text: str, *, source: str = "") -> RuleSet:
    """A RuleSet from YAML; RuleError naming every problem by its place."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleError([RuleViolation("", f"not valid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise RuleError([RuleViolation("", "must be a mapping")])
    problems: list[RuleViolation] = []
    known = {"quality_metric", "cost_measure", "prefer_gate_pass", "method_rules", "serving_rules"}
    for key in sorted(set(data) - known):
        problems.append(RuleViolation(key, f"unknown key; known: {sorted(known)}"))
    quality = data.get("quality_metric", "pass_rate")
    if not isinstance(quality, str) or not quality:
        problems.append(RuleViolation("quality_metric", "must be a suite metric name"))
    cost = data.get("cost_measure", "wall_time_s")
    if cost not in COST_MEASURES:
        problems.append(RuleViolation("cost_measure", f"{cost!r} is not one of {COST_MEASURES}"))
    prefer = data.get("prefer_gate_pass", True)
    if not isinstance(prefer, bool):
        problems.append(RuleViolation("prefer_gate_pass", "must be true or false"))
    method_rules = _rules(data, "method_rules", tuple(FAMILIES), problems)
    serving_rules = _rules(data, "serving_rules", SERVING_MODES, problems)
    if problems:
        raise RuleError(problems)
    return RuleSet(
        quality_metric=quality,
        cost_measure=cost,
        prefer_gate_pass=prefer,
        method_rules=method_rules,
        serving_rules=serving_rules,
        source=source,
    )


def _rules(
    data: dict, key: str, choices: Sequence[str], problems: list[RuleViolation]
) -> tuple[Rule, ...]:
    raw = data.get(key)
    if not isinstance(raw, list) or not raw:
        problems.append(RuleViolation(key, "must be a non-empty list of rules"))
        return ()
    rules, names = [], set()
    for i, item in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            problems.append(RuleViolation(where, "must be a mapping (name, recommend, why, when)"))
            continue
        for extra in sorted(set(item) - {"name", "recommend", "why", "when"}):
            problems.append(RuleViolation(f"{where}.{extra}", "unknown key"))
        name = item.get("name")
        if not isinstance(name, str) or not name:
            problems.append(RuleViolation(f"{where}.name", "is required"))
        elif name in names:
            problems.append(RuleViolation(f"{where}.name", f"{name!r} is used twice"))
        names.add(name)
        recommend = item.get("recommend")
        if recommend not in choices:
            problems.append(
                RuleViolation(f"{where}.recommend", f"{recommend!r} is not one of {list(choices)}")
            )
        why = item.get("why", "")
        if not isinstance(why, str):
            problems.append(RuleViolation(f"{where}.why", "must be text"))
        conditions = _conditions(item.get("when", []), f"{where}.when", problems)
        rules.append(Rule(str(name), str(recommend), str(why).strip(), conditions))
    return tuple(rules)


def _conditions(raw: Any, where: str, problems: list[RuleViolation]) -> tuple[Condition, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append(RuleViolation(where, "must be a list of {measure, op, value}"))
        return ()
    found = []
    for j, item in enumerate(raw):
        at = f"{where}[{j}]"
        if not isinstance(item, dict):
            problems.append(RuleViolation(at, "must be a mapping {measure, op, value}"))
            continue
        for extra in sorted(set(item) - {"measure", "op", "value"}):
            problems.append(RuleViolation(f"{at}.{extra}", "unknown key"))
        measure, op, value = item.get("measure"), item.get("op"), item.get("value")
        ok = True
        if measure not in MEASURES:
            problems.append(
                RuleViolation(
                    f"{at}.measure", f"unknown measure {measure!r}; known: {sorted(MEASURES)}"
                )
            )
            ok = False
        if op not in OPERATORS:
            problems.append(RuleViolation(f"{at}.op", f"{op!r} is not one of {list(OPERATORS)}"))
            ok = False
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, int | float):
            problems.append(RuleViolation(f"{at}.value", f"{value!r} is not a number"))
            ok = False
        if ok:
            found.append(Condition(str(measure), str(op), float(value)))
    return tuple(found)


# ------------------------------------------------------------------ evaluating


@dataclass
class ConditionResult:
    condition: Condition
    measured: float | None
    held: bool

    def text(self) -> str:
        got = "not measured" if self.measured is None else f"{self.measured:.4g}"
        return f"{self.condition.text()} (measured {got}: {'yes' if self.held else 'no'})"


@dataclass
class RuleOutcome:
    rule: Rule
    kind: str  # method | serving
    fired: bool
    conditions: list[ConditionResult] = field(default_factory=list)
    note: str = ""  # why a rule whose conditions held still could not fire

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.rule.name,
            "kind": self.kind,
            "recommend": self.rule.recommend,
            "why": self.rule.why,
            "fired": self.fired,
            "note": self.note,
            "conditions": [
                {
                    "measure": r.condition.measure,
                    "op": r.condition.op,
                    "threshold": r.condition.value,
                    "measured": r.measured,
                    "held": r.held,
                }
                for r in self.conditions
            ],
        }


def check(rule: Rule, subject: Subject, kind: str) -> RuleOutcome:
    results = []
    for condition in rule.when:
        value = MEASURES[condition.measure].compute(subject)
        held = value is not None and OPERATORS[condition.op](value, condition.value)
        results.append(ConditionResult(condition, value, held))
    return RuleOutcome(rule, kind, all(r.held for r in results), results)
