"""run_suite: generate a suite's outputs, score them, compare with production, gate.

Order of work, all deterministic for a given suite, generator and seed:
1. Cases are grouped by generation budget (max_new_tokens), budgets ascending, cases in
   suite order within a group; each group is one generator call (the generator fixes
   its own batch composition).
2. Each case's metrics are scored in the order the case lists them, metrics that read
   the others (adversarial_pass) last. A case passed when every non-judge metric that
   scored it passed (and at least one did): judge scores never decide pass_rate or a
   "successful task", so an untrusted judge cannot leak into them.
3. Case metrics are averaged over the cases that have them, overall and per tag;
   pass_rate likewise; run metrics (latency, cost, perplexity) are computed overall
   and, where the metric allows, per tag.
4. Deltas are candidate - production for every metric both have, per scope.
5. The gate policy (argument, else the suite's) gives the verdict.
What could not be measured is said in `notes`, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from posttrain.evaluation.calibration import Calibration
from posttrain.evaluation.gate import OVERALL, GatePolicy, evaluate_gate
from posttrain.evaluation.generation import Generation, Generator
from posttrain.evaluation.judge import Judge
from posttrain.evaluation.metrics import (
    METRICS,
    PASS_RATE,
    CaseContext,
    CaseScore,
    MetricSkipped,
    RunContext,
)
from posttrain.evaluation.metrics.cost import Prices
from posttrain.evaluation.results import (
    CaseResult,
    EvaluationResult,
    Provenance,
    report_id_for,
)
from posttrain.evaluation.suite import Case, Suite

TokenScorer = Callable[[Sequence[Mapping[str, Any]]], tuple[float, int]]


def generate_outputs(suite: Suite, generator: Generator, seed: int) -> dict[str, Generation]:
    """Case id -> Generation, one generator call per generation budget."""
    budgets: dict[int, list[Case]] = {}
    for case in suite.cases:
        budgets.setdefault(case.max_new_tokens or suite.max_new_tokens, []).append(case)
    outputs: dict[str, Generation] = {}
    for budget in sorted(budgets):
        cases = budgets[budget]
        generations = generator.generate([c.messages for c in cases], budget, seed)
        if len(generations) != len(cases):
            raise RuntimeError(
                f"generator returned {len(generations)} outputs for {len(cases)} prompts"
            )
        outputs.update(zip((c.id for c in cases), generations, strict=True))
    return outputs


def score_case(
    case: Case,
    generation: Generation,
    suite: Suite,
    *,
    judge: Judge | None = None,
    production_output: str | None = None,
) -> CaseResult:
    scores: dict[str, CaseScore] = {}
    ordered = sorted(case.metrics, key=lambda name: METRICS[name].after_others)  # stable
    for name in ordered:
        metric = METRICS[name]
        context = CaseContext(
            configs=suite.metric_configs,
            scores=dict(scores),
            rubric=suite.rubric,
            judge=judge,
            production_output=production_output,
        )
        scores[name] = metric.score(case, generation.text, suite.config(name), context)
    deciding = [s for n, s in scores.items() if not METRICS[n].judge_based and s.value is not None]
    return CaseResult(
        case_id=case.id,
        tags=case.tags,
        messages=case.messages,
        reference=case.reference,
        output=generation.text,
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
        latency_s=generation.latency_s,
        scores={name: scores[name] for name in case.metrics},
        passed=bool(deciding) and all(s.passed for s in deciding),
    )


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def aggregate(
    suite: Suite,
    results: Sequence[CaseResult],
    run_context: RunContext,
    notes: list[str],
) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """Metric tables {scope: {name: value}} and case counts per scope."""
    scopes = {OVERALL: list(results)}
    for tag in suite.tags:
        scopes[tag] = [r for r in results if tag in r.tags]
    table: dict[str, dict[str, float]] = {}
    for scope, members in scopes.items():
        values: dict[str, float] = {PASS_RATE: _mean([float(r.passed) for r in members])}
        for name in suite.case_metrics:
            scored = [
                r.scores[name].value
                for r in members
                if name in r.scores and r.scores[name].value is not None
            ]
            if scored:
                values[name] = _mean(scored)
        for name in suite.run_metrics:
            metric = METRICS[name]
            if scope != OVERALL and not metric.per_tag:
                continue
            try:
                values.update(metric.compute(members, run_context, suite.config(name)))
            except MetricSkipped as exc:
                if scope == OVERALL:
                    notes.append(f"{name}: not measured: {exc}")
        for name, value in list(values.items()):
            if not math.isfinite(value):
                notes.append(f"{name}@{scope}: {value} is not a number; left out")
                del values[name]
        table[scope] = values
    for name in suite.case_metrics:
        if name not in table[OVERALL]:
            notes.append(
                f"{name}: not measured: {next(iter(_skip_reasons(results, name)), 'no case scored')}"
            )
    return table, {scope: len(members) for scope, members in scopes.items()}


def _skip_reasons(results: Sequence[CaseResult], name: str) -> list[str]:
    return sorted(
        {
            r.scores[name].detail
            for r in results
            if name in r.scores and r.scores[name].value is None
        }
    )


def deltas_between(
    candidate: Mapping[str, Mapping[str, float]], production: Mapping[str, Mapping[str, float]]
) -> dict[str, dict[str, float]]:
    return {
        scope: {
            name: candidate[scope][name] - production[scope][name]
            for name in sorted(set(candidate[scope]) & set(production[scope]))
        }
        for scope in sorted(set(candidate) & set(production))
    }


def judge_trust(judge: Judge | None, calibration: Calibration | None, notes: list[str]) -> bool:
    if judge is None:
        return False
    if calibration is None:
        notes.append(f"judge {judge.id} is not calibrated: untrusted")
        return False
    if (calibration.judge_id, calibration.judge_version) != (judge.id, judge.version):
        notes.append(
            f"calibration is for judge {calibration.judge_id}@{calibration.judge_version}, not "
            f"{judge.id}@{judge.version}: untrusted"
        )
        return False
    if not calibration.trusted:
        notes.append(f"judge {judge.id} untrusted: {'; '.join(calibration.reasons)}")
    return calibration.trusted


def run_suite(
    suite: Suite,
    generator: Generator,
    *,
    seed: int,
    judge: Judge | None = None,
    calibration: Calibration | None = None,
    production_results: EvaluationResult | None = None,
    prices: Prices | None = None,
    policy: GatePolicy | None = None,
    provenance: Provenance | None = None,
    score_tokens: TokenScorer | None = None,
    report_id: str | None = None,
    created_at: str | None = None,
) -> EvaluationResult:
    """Evaluate one model on one suite (see the module doc).

    production_results: the production model's report on the same suite version (its
    outputs feed pairwise judging, its metrics the deltas and the regression rule).
    calibration: the judge's calibration (calibration.calibrate_judge); without one the
    judge is untrusted. score_tokens: for perplexity; default the generator's own
    `score_tokens` when it has one. policy: default the suite's gate policy; with neither,
    no verdict (gate None)."""
    if (
        production_results is not None
        and production_results.provenance.suite_version != suite.version
    ):
        raise ValueError(
            f"production report {production_results.report_id} is for suite version "
            f"{production_results.provenance.suite_version[:12]}, not {suite.version[:12]}: "
            "run production on this suite version first"
        )
    notes: list[str] = []
    provenance = provenance or Provenance()
    policy = policy or suite.gate_policy
    code_version = provenance.code_version
    if not code_version:
        from posttrain.training.report import code_version as git_code_version

        code_version = git_code_version()
    provenance = dataclasses.replace(
        provenance,
        code_version=code_version,
        suite=suite.name,
        suite_version=suite.version,
        judge_id=judge.id if judge else "",
        judge_version=judge.version if judge else "",
        anchor_set_version=calibration.anchor_set_version if calibration else "",
        gate_policy=f"{policy.name}@{policy.version}" if policy else "",
        seed=seed,
        prices=prices.to_json() if prices else None,
    )
    trusted = judge_trust(judge, calibration, notes)

    outputs = generate_outputs(suite, generator, seed)
    production_outputs = (
        {c.case_id: c.output for c in production_results.cases} if production_results else {}
    )
    results = [
        score_case(
            case,
            outputs[case.id],
            suite,
            judge=judge,
            production_output=production_outputs.get(case.id),
        )
        for case in suite.cases
    ]
    run_context = RunContext(
        cases={c.id: c for c in suite.cases},
        prices=prices,
        score_tokens=score_tokens or getattr(generator, "score_tokens", None),
    )
    metrics, counts = aggregate(suite, results, run_context, notes)
    production_metrics = production_results.metrics if production_results else None
    gate = (
        evaluate_gate(policy, metrics, production_metrics, judge_trusted=trusted)
        if policy
        else None
    )
    if policy is None:
        notes.append("no gate policy: no verdict")
    return EvaluationResult(
        report_id=report_id or report_id_for(provenance),
        provenance=provenance,
        metrics=metrics,
        case_counts=counts,
        cases=results,
        production_metrics=production_metrics,
        production_report_id=production_results.report_id if production_results else "",
        deltas=deltas_between(metrics, production_metrics) if production_metrics else {},
        gate=gate,
        judge_trusted=trusted,
        calibration=calibration,
        notes=notes,
        created_at=created_at,
    )
