"""The policy-incident guardrail: confident crossings stop an arm, noise and small samples do
not, and a stopped arm's users move to the remaining arms."""

from __future__ import annotations

import pytest

from posttrain.experiments import InferenceRecord, assign_variant, check_guardrail
from posttrain.experiments.probability import wilson_interval
from posttrain.experiments.stats import summarize


def reviewed(variant: str, n: int, incidents: int) -> list[InferenceRecord]:
    return [
        InferenceRecord(f"{variant}-{i}", variant, 100.0, policy_incident=i < incidents)
        for i in range(n)
    ]


def test_arm_whose_incident_rate_confidently_crosses_the_threshold_is_stopped() -> None:
    stats = summarize(reviewed("a", 1000, 5) + reviewed("b", 1000, 30), ["a", "b"])
    (stop,) = check_guardrail(stats, max_policy_incident_rate=0.01, min_requests=100)
    assert (stop.variant, stop.incidents, stop.reviewed, stop.incident_rate) == (
        "b",
        30,
        1000,
        0.03,
    )
    assert (
        stop.ci_low
        == pytest.approx(wilson_interval(30, 1000)[0])
        == pytest.approx(0.02109, abs=1e-5)
    )
    assert "'b'" in stop.reason and "3.00%" in stop.reason and "1.00%" in stop.reason


def test_point_estimate_above_the_threshold_alone_does_not_stop_an_arm() -> None:
    # 1.5% observed against a 1% threshold, but the Wilson lower bound is 0.91%.
    stats = summarize(reviewed("a", 1000, 15), ["a", "b"])
    assert wilson_interval(15, 1000)[0] < 0.01
    assert check_guardrail(stats, 0.01, min_requests=100) == []


def test_no_arm_is_stopped_before_min_requests() -> None:
    stats = summarize(reviewed("b", 10, 5), ["a", "b"])
    assert check_guardrail(stats, 0.01, min_requests=100) == []
    assert [s.variant for s in check_guardrail(stats, 0.01, min_requests=10)] == ["b"]


def test_unreviewed_records_do_not_count_towards_min_requests() -> None:
    unreviewed = [InferenceRecord(f"u{i}", "b", 100.0) for i in range(500)]
    stats = summarize(reviewed("b", 50, 10) + unreviewed, ["a", "b"])
    assert check_guardrail(stats, 0.01, min_requests=100) == []


def test_already_stopped_arms_are_skipped_and_bad_thresholds_refused() -> None:
    stats = summarize(reviewed("b", 1000, 300), ["a", "b"])
    assert check_guardrail(list(stats.values()), 0.01, 100, already_stopped={"b"}) == []
    with pytest.raises(ValueError, match="max_policy_incident_rate"):
        check_guardrail(stats, 1.5, 100)
    with pytest.raises(ValueError, match="min_requests"):
        check_guardrail(stats, 0.01, 0)


def test_guardrail_stop_reroutes_only_the_stopped_arms_users() -> None:
    arms = [("merged", 0.5), ("adapter", 0.5)]
    stats = summarize(
        reviewed("merged", 500, 2) + reviewed("adapter", 500, 60), ["merged", "adapter"]
    )
    stopped = {s.variant for s in check_guardrail(stats, 0.05, 100)}
    assert stopped == {"adapter"}
    users = [f"user-{i}" for i in range(2000)]
    before = [assign_variant("exp-g", u, arms) for u in users]
    after = [assign_variant("exp-g", u, arms, stopped=stopped) for u in users]
    assert set(after) == {"merged"}
    assert all(now == then for then, now in zip(before, after, strict=True) if then == "merged")
