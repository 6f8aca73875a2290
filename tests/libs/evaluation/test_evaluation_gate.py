"""The release gate: PASS, each rule failing with its reason and number, the untrusted-judge
rule, and policy files."""

from __future__ import annotations

import pytest

from posttrain.evaluation import GATE_RULES, GatePolicy, evaluate_gate, load_gate_policy
from posttrain.evaluation.gate import regression_limit
from posttrain.evaluation.metrics import ConfigError

CANDIDATE = {
    "overall": {
        "pass_rate": 0.8,
        "token_f1": 0.7,
        "judge_score": 4.2,
        "latency_p95_s": 1.5,
        "cost_per_successful_task": 0.0004,
        "perplexity": 12.0,
    },
    "policy": {"pass_rate": 1.0, "refusal": 1.0},
    "long-context": {"pass_rate": 0.5, "token_f1": 0.6},
}
PRODUCTION = {
    "overall": {
        "pass_rate": 0.78,
        "token_f1": 0.72,
        "judge_score": 4.0,
        "latency_p95_s": 1.0,
        "perplexity": 11.0,
    },
    "policy": {"pass_rate": 1.0, "refusal": 1.0},
    "long-context": {"pass_rate": 0.5, "token_f1": 0.6},
}
POLICY = GatePolicy(
    name="t",
    min_metrics={"token_f1": 0.5, "pass_rate@long-context": 0.5, "judge_score": 3.5},
    max_metrics={"perplexity": 20.0},
    max_regression={"*": 0.05, "policy": 0.0},
    max_latency_p95_s=2.0,
    max_cost_per_successful_task=0.001,
)


def with_values(table: dict, **changes: float) -> dict:
    """A copy of a metric table with "name" or "name@scope" set."""
    out = {scope: dict(values) for scope, values in table.items()}
    for key, value in changes.items():
        name, _, scope = key.replace("__", "@").partition("@")
        out[scope or "overall"][name] = value
    return out


def test_every_rule_is_registered() -> None:
    assert set(GATE_RULES) == {
        "min_metric",
        "max_metric",
        "max_regression",
        "max_latency_p95_s",
        "max_cost_per_successful_task",
    }


def test_pass_with_reasons() -> None:
    result = evaluate_gate(POLICY, CANDIDATE, PRODUCTION, judge_trusted=True)
    assert result.verdict == "PASS", result.reasons
    assert "min_metric token_f1@overall: 0.7 >= 0.5" in result.reasons
    assert "max_latency_p95_s latency_p95_s@overall: 1.5 <= 2" in result.reasons
    assert any(
        r.startswith(
            "max_regression token_f1@overall: 0.7 vs production 0.72, regression 0.02 <= 0.05"
        )
        for r in result.reasons
    )
    assert result.policy.startswith("t@")
    # latency and cost are not quality: they are not compared for regression
    assert not any(
        c.rule == "max_regression" and c.subject.startswith("latency") for c in result.checks
    )


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"token_f1": 0.41}, "min_metric token_f1@overall: 0.41 < 0.5"),
        ({"pass_rate@long-context": 0.25}, "min_metric pass_rate@long-context: 0.25 < 0.5"),
        ({"perplexity": 25.0}, "max_metric perplexity@overall: 25 > 20"),
        ({"latency_p95_s": 3.25}, "max_latency_p95_s latency_p95_s@overall: 3.25 > 2"),
        (
            {"cost_per_successful_task": 0.002},
            "max_cost_per_successful_task cost_per_successful_task@overall: 0.002 > 0.001",
        ),
        (
            {"token_f1": 0.6},
            "max_regression token_f1@overall: 0.6 vs production 0.72, regression 0.12 > 0.05",
        ),
        (
            {"refusal@policy": 0.9},
            "max_regression refusal@policy: 0.9 vs production 1, regression 0.1 > 0",
        ),
    ],
)
def test_each_rule_fails_with_its_reason(changes: dict, reason: str) -> None:
    # without production for the threshold rules, so only the rule under test fires
    production = PRODUCTION if reason.startswith("max_regression") else None
    result = evaluate_gate(
        POLICY, with_values(CANDIDATE, **changes), production, judge_trusted=True
    )
    assert result.verdict == "FAIL"
    assert result.reasons == [reason]


def test_missing_metric_fails_safe() -> None:
    candidate = with_values(CANDIDATE)
    del candidate["overall"]["cost_per_successful_task"]
    result = evaluate_gate(POLICY, candidate, PRODUCTION, judge_trusted=True)
    assert result.reasons == [
        "max_cost_per_successful_task cost_per_successful_task@overall: not measured (limit 0.001)"
    ]


def test_lower_is_better_metrics_regress_upwards() -> None:
    policy = GatePolicy(
        min_metrics={"token_f1": 0.1},
        max_regression={"perplexity@*": 0.5},
        regression_metrics=("perplexity",),
    )
    worse = evaluate_gate(policy, CANDIDATE, PRODUCTION, judge_trusted=True)
    assert worse.reasons == [
        "max_regression perplexity@overall: 12 vs production 11, regression 1 > 0.5"
    ]
    better = evaluate_gate(
        policy, with_values(CANDIDATE, perplexity=10.0), PRODUCTION, judge_trusted=True
    )
    assert better.verdict == "PASS"


def test_untrusted_judge_is_reported_but_not_counted() -> None:
    result = evaluate_gate(POLICY, CANDIDATE, PRODUCTION, judge_trusted=False)
    assert result.verdict == "PASS"  # other quality criteria pass on their own
    judge = next(
        c for c in result.checks if c.subject == "judge_score@overall" and c.rule == "min_metric"
    )
    assert judge.passed and not judge.counted and "judge untrusted: not counted" in judge.message
    # a failing judge criterion still fails, trusted or not
    low = evaluate_gate(POLICY, with_values(CANDIDATE, judge_score=2.0), None, judge_trusted=False)
    assert low.reasons == ["min_metric judge_score@overall: 2 < 3.5"]


def test_untrusted_judge_cannot_pass_a_gate_on_its_own() -> None:
    judge_only = GatePolicy(min_metrics={"judge_score": 3.5}, max_latency_p95_s=2.0)
    trusted = evaluate_gate(judge_only, CANDIDATE, None, judge_trusted=True)
    assert trusted.verdict == "PASS"
    untrusted = evaluate_gate(judge_only, CANDIDATE, None, judge_trusted=False)
    assert untrusted.verdict == "FAIL"
    assert untrusted.reasons == [
        "no counted quality criterion: only judge-based criteria passed and the judge is untrusted; "
        "an untrusted judge's scores can't pass a gate on their own"
    ]
    # and with require_trusted_judge off, the operator accepts the judge as is
    lenient = GatePolicy(min_metrics={"judge_score": 3.5}, require_trusted_judge=False)
    assert evaluate_gate(lenient, CANDIDATE, None, judge_trusted=False).verdict == "PASS"


def test_a_failing_sole_criterion_gives_one_reason() -> None:
    result = evaluate_gate(GatePolicy(min_metrics={"token_f1": 0.9}), CANDIDATE)
    assert result.reasons == ["min_metric token_f1@overall: 0.7 < 0.9"]


def test_a_policy_without_quality_criteria_fails() -> None:
    result = evaluate_gate(GatePolicy(max_latency_p95_s=2.0), CANDIDATE, None, judge_trusted=True)
    assert result.verdict == "FAIL" and "no quality threshold" in result.reasons[0]


def test_regression_without_production() -> None:
    result = evaluate_gate(POLICY, CANDIDATE, None, judge_trusted=True)
    assert result.verdict == "PASS"
    note = next(c for c in result.checks if c.rule == "max_regression")
    assert not note.counted and "not applied" in note.message
    required = GatePolicy(**{**POLICY.to_json(), "require_production": True})
    assert evaluate_gate(required, CANDIDATE, None, judge_trusted=True).reasons == [
        "max_regression: no production report to compare with (require_production)"
    ]


def test_regression_limit_specificity() -> None:
    limits = {
        "*": 0.1,
        "policy": 0.0,
        "*@long-context": 0.2,
        "judge_score@*": 0.3,
        "token_f1@policy": 0.05,
    }
    assert regression_limit(limits, "token_f1", "policy") == 0.05
    assert regression_limit(limits, "judge_score", "policy") == 0.3
    assert regression_limit(limits, "refusal", "policy") == 0.0
    assert regression_limit(limits, "token_f1", "long-context") == 0.2
    assert regression_limit(limits, "token_f1", "overall") == 0.1
    assert regression_limit({"policy": 0.0}, "token_f1", "overall") is None


def test_policy_yaml_and_errors(tmp_path) -> None:
    path = tmp_path / "gate.yaml"
    path.write_text("name: x\nmin_metrics: {token_f1: 0.5}\nmax_latency_p95_s: 2\n")
    policy = load_gate_policy(path)
    assert policy.min_metrics == {"token_f1": 0.5} and policy.max_latency_p95_s == 2
    assert (
        policy.version
        == load_gate_policy(
            b"max_latency_p95_s: 2\nname: x\nmin_metrics: {token_f1: 0.5}\n"
        ).version
    )
    with pytest.raises(ConfigError) as err:
        load_gate_policy({"min_metric": {"x": 1}, "max_latency_p95_s": "fast"})
    assert {f for f, _ in err.value.problems} == {"min_metric", "max_latency_p95_s"}
    with pytest.raises(ConfigError, match="a number is required"):
        load_gate_policy({"min_metrics": {"token_f1": "high"}})
