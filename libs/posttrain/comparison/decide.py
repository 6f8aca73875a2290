"""recommend(): the decision framework applied to a comparison's measurements.

The method rules pick a family (full, LoRA/QLoRA, prompt/prefix, ...); within it the
candidate with the best quality wins (one that passed the release gate first when the
rules prefer that; ties go to the cheaper one). The serving rules then pick merged or
adapter serving for that candidate, among the ways it can be served. Every rule is
checked and kept in the outcome, so the report shows which rule fired on which measured
number, and why the others did not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from posttrain.comparison.measurements import CandidateMeasurement, DecisionContext
from posttrain.comparison.rules import MEASURES, RuleOutcome, RuleSet, Subject, check


@dataclass
class Recommendation:
    candidate: str | None  # the recommended candidate's name; None: nothing was measured
    method: str | None
    serving: str | None  # merged | adapter
    method_rule: str | None
    serving_rule: str | None
    summary: str
    measures: dict[str, float | None] = field(default_factory=dict)
    outcomes: list[RuleOutcome] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "method": self.method,
            "serving": self.serving,
            "method_rule": self.method_rule,
            "serving_rule": self.serving_rule,
            "summary": self.summary,
            "measures": self.measures,
            "rules": [o.to_json() for o in self.outcomes],
        }


def cost_of(candidate: CandidateMeasurement, measure: str) -> float | None:
    value = getattr(candidate, measure, None)
    return None if value is None else float(value)


def pick(subject: Subject, family: str, rules: RuleSet) -> CandidateMeasurement | None:
    """The family's best candidate: gate PASS first (if preferred), then quality, then the
    lower cost. Candidates without a quality number come last."""
    found = subject.measured(family)
    if not found:
        return None

    def key(c: CandidateMeasurement):
        quality = c.quality_of(rules.quality_metric)
        cost = cost_of(c, rules.cost_measure)
        return (
            0 if (not rules.prefer_gate_pass or c.gate_verdict == "PASS") else 1,
            0 if quality is not None else 1,
            -(quality or 0.0),
            cost if cost is not None else float("inf"),
            c.name,
        )

    return min(found, key=key)


def recommend(
    candidates: Sequence[CandidateMeasurement], context: DecisionContext, rules: RuleSet
) -> Recommendation:
    subject = Subject(candidates, context, rules.quality_metric)
    outcomes: list[RuleOutcome] = []
    chosen, method_rule = None, None
    for rule in rules.method_rules:
        outcome = check(rule, subject, "method")
        if outcome.fired and chosen is not None:
            outcome.fired, outcome.note = False, f"held, but {method_rule.name!r} fired first"
        elif outcome.fired:
            best = pick(subject, rule.recommend, rules)
            if best is None:
                outcome.fired = False
                outcome.note = f"held, but no {rule.recommend} candidate was trained"
            else:
                chosen, method_rule = best, rule
        outcomes.append(outcome)

    subject.chosen = chosen
    serving, serving_rule = None, None
    for rule in rules.serving_rules:
        outcome = check(rule, subject, "serving")
        if outcome.fired and serving_rule is not None:
            outcome.fired, outcome.note = False, f"held, but {serving_rule.name!r} fired first"
        elif outcome.fired and chosen is None:
            outcome.fired, outcome.note = False, "no candidate to serve"
        elif outcome.fired and rule.recommend not in chosen.serving_options:
            outcome.fired = False
            outcome.note = f"{chosen.method} cannot be served {rule.recommend}"
        elif outcome.fired:
            serving, serving_rule = rule.recommend, rule
        outcomes.append(outcome)
    if chosen is not None and serving is None:
        serving = chosen.serving_options[0]

    measures = {name: m.compute(subject) for name, m in MEASURES.items()}
    return Recommendation(
        candidate=chosen.name if chosen else None,
        method=chosen.method if chosen else None,
        serving=serving,
        method_rule=method_rule.name if method_rule else None,
        serving_rule=serving_rule.name if serving_rule else None,
        summary=_summary(chosen, serving, outcomes, rules),
        measures=measures,
        outcomes=outcomes,
    )


def _summary(
    chosen: CandidateMeasurement | None,
    serving: str | None,
    outcomes: list[RuleOutcome],
    rules: RuleSet,
) -> str:
    if chosen is None:
        return "No candidate finished training, so there is nothing to recommend."
    parts = []
    quality = chosen.quality_of(rules.quality_metric)
    shown = "not measured" if quality is None else f"{quality:.3f}"
    parts.append(
        f"Recommended: {chosen.name} ({chosen.method}), served {serving}; "
        f"{rules.quality_metric} {shown}."
    )
    for outcome in outcomes:
        if not outcome.fired:
            continue
        on = "; ".join(r.text() for r in outcome.conditions) or "no conditions (fallback)"
        parts.append(f"{outcome.kind} rule {outcome.rule.name!r} fired on {on}: {outcome.rule.why}")
    return " ".join(parts)
