"""Report math on fixed data against hand-computed values, and the verdict rules."""

from __future__ import annotations

import math

import pytest

from posttrain.experiments import AnalysisConfig, InferenceRecord, analyze
from posttrain.experiments.probability import (
    normal_critical,
    t_critical,
    t_two_sided_p,
    wilson_interval,
)
from posttrain.experiments.stats import (
    holm_adjust,
    mean_estimate,
    newcombe_interval,
    summarize,
    two_proportion_z_test,
    welch_test,
)

Z = 1.959963984540054  # standard normal 97.5% quantile


def arm(
    variant: str,
    n: int,
    successes: int,
    *,
    incidents: int = 0,
    interventions: int = 0,
    cost: float = 0.01,
    latency_ms: float = 100.0,
) -> list[InferenceRecord]:
    """n records with feedback: the first `successes` succeed, the first `incidents` are
    policy incidents, the first `interventions` needed a human."""
    return [
        InferenceRecord(
            request_id=f"{variant}-{i}",
            variant=variant,
            latency_ms=latency_ms + i % 7,
            cost=cost,
            success=i < successes,
            policy_incident=i < incidents,
            human_intervention=i < interventions,
        )
        for i in range(n)
    ]


def test_wilson_interval_for_45_of_100() -> None:
    p, n = 0.45, 100
    center = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2)) / (1 + Z**2 / n)
    low, high = wilson_interval(45, 100)
    assert (low, high) == pytest.approx((center - half, center + half), rel=1e-12)
    assert (round(low, 4), round(high, 4)) == (0.3561, 0.5476)  # 0.35615, 0.54755
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(50, 50)[1] == 1.0


def test_normal_and_t_quantiles_match_tables() -> None:
    assert normal_critical(0.05) == pytest.approx(Z, rel=1e-12)
    assert t_critical(0.05, 10) == pytest.approx(2.228138852, rel=1e-9)
    assert t_critical(0.05, 1) == pytest.approx(12.70620474, rel=1e-9)
    assert t_critical(0.01, 30) == pytest.approx(2.749995654, rel=1e-9)
    assert t_two_sided_p(2.228138852, 10) == pytest.approx(0.05, rel=1e-8)
    assert t_critical(0.05, 1e6) == pytest.approx(Z)


def test_two_proportion_z_test_120_of_200_against_100_of_200() -> None:
    pooled = 220 / 400
    z_by_hand = (0.6 - 0.5) / math.sqrt(pooled * (1 - pooled) * (1 / 200 + 1 / 200))
    z, p = two_proportion_z_test(120, 200, 100, 200)
    assert z == pytest.approx(z_by_hand, rel=1e-12) == pytest.approx(2.0100756305)
    assert p == pytest.approx(math.erfc(z_by_hand / math.sqrt(2)), rel=1e-12)
    assert round(p, 5) == 0.04442
    assert two_proportion_z_test(0, 10, 0, 10) == (0.0, 1.0)  # nothing varies


def test_newcombe_interval_is_built_from_the_two_wilson_intervals() -> None:
    l1, u1 = wilson_interval(120, 200)
    l0, u0 = wilson_interval(100, 200)
    low, high = newcombe_interval(120, 200, 100, 200)
    assert low == pytest.approx(0.1 - math.sqrt((0.6 - l1) ** 2 + (u0 - 0.5) ** 2))
    assert high == pytest.approx(0.1 + math.sqrt((u1 - 0.6) ** 2 + (0.5 - l0) ** 2))
    assert (round(low, 4), round(high, 4)) == (0.0026, 0.1948)


def test_holm_adjustment_order() -> None:
    # sorted 0.01, 0.03, 0.04: x3 = 0.03, x2 = 0.06, x1 = 0.04 -> raised to 0.06 (monotone)
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # sorted 0.01, 0.03, 0.04, 0.2: 0.04, 0.09, max(0.08, 0.09), 0.2
    assert holm_adjust([0.04, 0.01, 0.2, 0.03]) == pytest.approx([0.09, 0.04, 0.2, 0.09])
    assert holm_adjust([0.5, None, 0.9]) == [1.0, None, 1.0]  # capped, then monotone
    assert holm_adjust([0.02]) == [0.02]


def test_mean_interval_and_welch_test_on_fixed_data() -> None:
    a = mean_estimate([1, 2, 3, 4, 5])
    half = 2.776445105 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4) * s / sqrt(n)
    assert (a.mean, a.std) == (3.0, pytest.approx(math.sqrt(2.5)))
    assert (a.ci_low, a.ci_high) == pytest.approx((3 - half, 3 + half), rel=1e-9)

    b = mean_estimate([2, 4, 6, 8, 10])
    d, low, high, p, df = welch_test(b, a)
    # se^2 = 10/5 + 2.5/5 = 2.5; df = 2.5^2 / ((2^2 + 0.5^2) / 4) = 5.882...
    assert d == 3.0
    assert df == pytest.approx(6.25 / 1.0625)
    assert p == pytest.approx(0.107531194930627, rel=1e-9)  # mpmath, exact incomplete beta
    assert (low, high) == pytest.approx((-0.887741643736976, 6.88774164373698), rel=1e-9)


def test_variant_summary_on_fixed_records() -> None:
    records = [
        InferenceRecord("r1", "a", 10.0, 5, 7, cost=0.01, success=True, policy_incident=False),
        InferenceRecord("r2", "a", 20.0, 5, 7, cost=0.02, success=False, policy_incident=True),
        InferenceRecord("r3", "a", 30.0, 5, 7, cost=0.03, success=True, human_intervention=True),
        InferenceRecord("r4", "a", 40.0, 5, 7, cost=0.04),  # no feedback yet
        InferenceRecord("r5", "b", 50.0, cost=0.05, success=False, rating=4.0, judge_score=0.5),
        InferenceRecord("r6", "b", 60.0, cost=0.05, success=False, rating=2.0, judge_score=0.7),
    ]
    stats = summarize(records, ["a", "b", "c"])
    a, b, c = stats["a"], stats["b"], stats["c"]
    assert (a.requests, a.feedback_count, a.success.count) == (4, 3, 2)
    assert a.success.rate == pytest.approx(2 / 3)
    assert (a.success.ci_low, a.success.ci_high) == wilson_interval(2, 3)
    assert (a.policy_incident.count, a.policy_incident.n) == (1, 2)  # r3, r4 not reviewed
    assert (a.intervention.count, a.intervention.n) == (1, 1)
    # (0.01 + 0.02 + 0.03) spent on the requests with feedback / 2 successes
    assert a.cost_per_successful_task == pytest.approx(0.03)
    assert a.total_cost == pytest.approx(0.10)
    assert (a.prompt_tokens, a.completion_tokens) == (20, 28)
    assert a.latency_p50_ms == 25.0 and a.latency_p95_ms == pytest.approx(38.5)
    assert a.latency_ms.mean == 25.0
    assert b.cost_per_successful_task == math.inf  # feedback, no success
    assert (b.rating.mean, b.judge_score.mean) == (3.0, pytest.approx(0.6))
    assert a.rating.n == 0 and a.rating.mean is None
    assert c.requests == 0 and c.success.rate is None and c.cost_per_successful_task is None
    assert c.latency_p50_ms is None


def test_summary_refuses_unknown_variants_and_repeated_requests() -> None:
    with pytest.raises(ValueError, match=r"records\[0\]\.variant 'z'"):
        summarize([InferenceRecord("r1", "z", 1.0)], ["a", "b"])
    with pytest.raises(ValueError, match=r"records\[1\]\.request_id 'r1' appears twice"):
        summarize([InferenceRecord("r1", "a", 1.0), InferenceRecord("r1", "b", 1.0)], ["a", "b"])


def test_comparisons_against_control_on_fixed_data() -> None:
    records = arm("a", 200, 100, incidents=2) + arm("b", 200, 120, incidents=4, latency_ms=110)
    analysis = analyze(records, ["a", "b"])
    by_metric = {d.metric: d for d in analysis.comparisons}
    success = by_metric["success_rate"]
    assert (success.variant, success.control) == ("b", "a")
    assert success.difference == pytest.approx(0.1)
    assert success.p_value == pytest.approx(0.0444231848500, rel=1e-9)
    assert success.p_value_adjusted == success.p_value  # one comparison: nothing to adjust
    assert (success.ci_low, success.ci_high) == pytest.approx(newcombe_interval(120, 200, 100, 200))
    assert by_metric["policy_incident_rate"].difference == pytest.approx(0.01)
    assert by_metric["latency_ms"].difference == pytest.approx(10.0)
    assert by_metric["rating"].difference is None  # nobody rated


def test_verdict_names_the_winner_when_significant() -> None:
    records = arm("a", 200, 100) + arm("b", 200, 120)
    verdict = analyze(records, ["a", "b"]).verdict
    assert verdict.sample_sufficient and verdict.winner == "b"
    assert verdict.text.startswith("'b' wins on success rate")
    assert "+10.0 pts" in verdict.text and "p = 0.0444" in verdict.text
    assert verdict.p_value == pytest.approx(0.04442318485)


def test_verdict_says_no_significant_difference() -> None:
    verdict = analyze(arm("a", 200, 100) + arm("b", 200, 105), ["a", "b"]).verdict
    assert verdict.sample_sufficient and verdict.winner is None
    assert verdict.text.startswith("no significant difference in success rate")


def test_verdict_waits_for_the_minimum_sample() -> None:
    records = arm("a", 250, 100) + arm("b", 150, 120) + arm("c", 199, 100)
    unrated = [InferenceRecord(f"x{i}", "b", 1.0) for i in range(100)]  # no feedback: no count
    verdict = analyze(records + unrated, ["a", "b", "c"]).verdict
    assert not verdict.sample_sufficient and verdict.winner is None and verdict.p_value is None
    assert verdict.text == (
        "insufficient data: 150 of 200 records with feedback in arm 'b'; 1 more arm(s) short"
    )
    config = AnalysisConfig(min_sample=150)
    assert analyze(records, ["a", "b", "c"], config).verdict.sample_sufficient


def test_verdict_never_crowns_an_arm_with_significantly_more_incidents() -> None:
    records = arm("a", 300, 150, incidents=3) + arm("b", 300, 200, incidents=30)
    verdict = analyze(records, ["a", "b"]).verdict
    assert verdict.winner is None
    assert "significantly higher policy-incident rate" in verdict.text
    assert "'b' 10.0% vs 'a' 1.0%" in verdict.text


def test_control_wins_when_every_arm_is_significantly_worse() -> None:
    verdict = analyze(arm("a", 200, 120) + arm("b", 200, 90), ["a", "b"]).verdict
    assert verdict.winner == "a"
    assert verdict.text.startswith("control 'a' wins on success rate")


def test_control_with_significantly_more_incidents_is_not_crowned_either() -> None:
    records = arm("a", 300, 200, incidents=30) + arm("b", 300, 150, incidents=3)
    verdict = analyze(records, ["a", "b"]).verdict
    assert verdict.sample_sufficient and verdict.winner is None
    assert verdict.text.startswith("no winner")
    assert "control 'a' has the best success rate but a significantly higher" in verdict.text


def test_no_verdict_when_every_other_arm_is_stopped() -> None:
    verdict = analyze(arm("a", 300, 150) + arm("b", 300, 200), ["a", "b"], stopped={"b"}).verdict
    assert (verdict.sample_sufficient, verdict.winner) == (False, None)
    assert verdict.text == "no verdict: every arm besides control 'a' is stopped ('b')"


def test_holm_correction_can_withhold_a_winner_that_one_comparison_would_name() -> None:
    records = arm("a", 200, 100) + arm("b", 200, 120) + arm("c", 200, 120)
    analysis = analyze(records, ["a", "b", "c"])
    success = [d for d in analysis.comparisons if d.metric == "success_rate"]
    assert [d.p_value < 0.05 for d in success] == [True, True]
    assert [d.p_value_adjusted for d in success] == pytest.approx([0.04442318485 * 2] * 2)
    assert analysis.verdict.winner is None
    assert "Holm-adjusted p = 0.0888" in analysis.verdict.text


def test_stopped_arms_are_neither_compared_nor_waited_for() -> None:
    records = arm("a", 200, 100) + arm("b", 200, 130) + arm("c", 20, 1, incidents=10)
    analysis = analyze(records, ["a", "b", "c"], stopped={"c"})
    assert analysis.stopped == ("c",)
    assert analysis.verdict.sample_sufficient and analysis.verdict.winner == "b"
    with pytest.raises(ValueError, match="control"):
        analyze(records, ["a", "b", "c"], AnalysisConfig(control="z"))


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="alpha"):
        AnalysisConfig(alpha=1.5)
    with pytest.raises(ValueError, match="min_sample"):
        AnalysisConfig(min_sample=0)
