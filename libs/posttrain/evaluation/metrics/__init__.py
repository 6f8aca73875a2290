"""Evaluation metrics, each one registered unit: a module with a typed config dataclass and
a `METRIC` (metrics/base.py says what a metric is). Adding one is one file here and one
line in METRICS; tests/libs/evaluation runs every registered metric through the shared
checks.

Long-context is not a metric: it is a tag. Every metric is also reported per tag, so
"the case's metric on long-context cases" is `by_tag["long-context"]` of the report
(and `pass_rate@long-context` in a gate policy). A separate metric would only repeat
those numbers under another name.
"""

from __future__ import annotations

from posttrain.evaluation.metrics import (
    adversarial_pass,
    cost,
    exact_match,
    json_valid,
    judge_score,
    judge_win_rate,
    latency,
    perplexity,
    refusal,
    regex_match,
    rouge_l,
    token_f1,
    tool_call_valid,
)
from posttrain.evaluation.metrics.base import (
    CaseContext,
    CaseScore,
    ConfigError,
    Metric,
    MetricSkipped,
    RunContext,
    config_from_mapping,
    config_help,
)

METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        exact_match.METRIC,
        token_f1.METRIC,
        rouge_l.METRIC,
        regex_match.METRIC,
        json_valid.METRIC,
        tool_call_valid.METRIC,
        refusal.METRIC,
        adversarial_pass.METRIC,
        judge_score.METRIC,
        judge_win_rate.METRIC,
        latency.METRIC,
        cost.METRIC,
        perplexity.METRIC,
    )
}

# Not a registered metric: the share of cases that passed every non-judge metric they have
# (a "successful task"), computed by the runner overall and per tag.
PASS_RATE = "pass_rate"


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}") from None


def value_direction(name: str) -> bool | None:
    """True when a higher value of this reported number is better, False when lower is,
    None for a name no metric produces."""
    if name == PASS_RATE:
        return True
    for metric in METRICS.values():
        if name in metric.outputs:
            return metric.outputs[name]
    return None


def is_judge_based(name: str) -> bool:
    """Whether a reported number comes from an LLM judge."""
    return any(m.judge_based and name in m.outputs for m in METRICS.values())


__all__ = [
    "METRICS",
    "PASS_RATE",
    "CaseContext",
    "CaseScore",
    "ConfigError",
    "Metric",
    "MetricSkipped",
    "RunContext",
    "config_from_mapping",
    "config_help",
    "get_metric",
    "is_judge_based",
    "value_direction",
]
