"""Prometheus metrics of the evaluator (prometheus_client's default registry; the service
exposes them on settings.metrics_port). Only evaluations that ran count: a request
answered with a report already recorded does not."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVALUATIONS = Counter(
    "posttrain_evaluator_evaluations_total",
    "evaluations recorded, by trigger (model.registered, RunEvaluation) and gate verdict",
    ["trigger", "verdict"],
)
EVALUATION_SECONDS = Histogram(
    "posttrain_evaluator_evaluation_seconds",
    "time to evaluate a model: suite, judge, gate and report",
    ["trigger"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600, 7200),
)


def observe(trigger: str, verdict: str, seconds: float) -> None:
    EVALUATIONS.labels(trigger, verdict).inc()
    EVALUATION_SECONDS.labels(trigger).observe(seconds)
