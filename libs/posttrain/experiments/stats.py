"""Per-variant statistics of an experiment, differences against the control arm, and the
verdict.

Definitions (per arm; "with feedback" means `success` is not None):
- success rate = successes / records with feedback, Wilson score interval.
- policy-incident rate, intervention rate = flagged / records whose flag is known (not
  None), Wilson score interval.
- latency: mean with a t interval, p50 and p95 with numpy's linear interpolation, over all
  records of the arm.
- cost per successful task = cost of the records with feedback / their successes, so both
  sides count the same requests. None when the arm has no feedback; math.inf when it has
  feedback but no success (every dollar spent bought nothing).
- rating, judge score: mean with a t interval over the records that have one.

Differences are variant minus control:
- proportions: two-proportion z-test with the pooled variance,
  z = (p1 - p0) / sqrt(p (1 - p) (1/n1 + 1/n0)) with p = (x1 + x0) / (n1 + n0), two-sided;
  interval by Newcombe's hybrid score method (his method 10) from the two Wilson intervals.
- means (latency, rating, judge score): Welch's t-test, Welch-Satterthwaite degrees of
  freedom, interval (m1 - m0) +- t * sqrt(s1^2/n1 + s0^2/n0).
- with several non-control arms, each metric's p-values are Holm-Bonferroni adjusted over
  those arms (`p_value_adjusted`).

The verdict (see `decide`) speaks only when every compared arm has `min_sample` records
with feedback, names a winner only on the primary metric (success rate) at the Holm-adjusted
level, and never names one whose policy-incident rate is significantly worse. This module
is pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from posttrain.experiments.probability import (
    normal_two_sided_p,
    t_critical,
    t_two_sided_p,
    wilson_interval,
)

PRIMARY_METRIC = "success_rate"
PROPORTION_METRICS = ("success_rate", "policy_incident_rate", "intervention_rate")
MEAN_METRICS = ("latency_ms", "rating", "judge_score")


@dataclass(frozen=True)
class InferenceRecord:
    """One served request of an experiment and, once it arrives, its feedback."""

    request_id: str
    variant: str
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    success: bool | None = None  # None: no feedback yet
    policy_incident: bool | None = None  # None: not reviewed
    human_intervention: bool | None = None
    rating: float | None = None  # the user's rating, where given
    judge_score: float | None = None  # the configured judge's score, where configured


@dataclass(frozen=True)
class AnalysisConfig:
    """How an experiment is judged; every field is plain data, stored with the report."""

    alpha: float = field(
        default=0.05,
        metadata={"help": "significance level of every test; intervals are (1 - alpha) two-sided"},
    )
    min_sample: int = field(
        default=200,
        metadata={"help": "records with feedback every compared arm needs before a verdict"},
    )
    control: str | None = field(
        default=None,
        metadata={"help": "the arm the others are compared with; None: the first variant"},
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha}")
        if self.min_sample < 1:
            raise ValueError(f"min_sample must be >= 1, got {self.min_sample}")


@dataclass(frozen=True)
class Proportion:
    count: int
    n: int
    rate: float | None  # None when n is 0
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class MeanEstimate:
    n: int
    mean: float | None  # None when n is 0
    std: float | None  # sample standard deviation (n - 1); None when n < 2
    ci_low: float | None  # None when n < 2
    ci_high: float | None


@dataclass(frozen=True)
class VariantStats:
    variant: str
    requests: int
    success: Proportion
    policy_incident: Proportion
    intervention: Proportion
    latency_ms: MeanEstimate
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    total_cost: float
    cost_per_successful_task: float | None  # math.inf: feedback but no success
    rating: MeanEstimate
    judge_score: MeanEstimate

    @property
    def feedback_count(self) -> int:
        return self.success.n


@dataclass(frozen=True)
class MetricDifference:
    """variant minus control on one metric."""

    metric: str
    variant: str
    control: str
    difference: float | None  # None when either arm has no data for the metric
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    p_value_adjusted: float | None  # Holm over the non-control arms, this metric
    test: str


@dataclass(frozen=True)
class Verdict:
    sample_sufficient: bool
    winner: str | None
    text: str
    p_value: float | None  # the Holm-adjusted p behind the verdict; None without a verdict


@dataclass(frozen=True)
class Analysis:
    control: str
    variants: dict[str, VariantStats]  # in the experiment's variant order
    comparisons: list[MetricDifference]
    verdict: Verdict
    config: AnalysisConfig
    stopped: tuple[str, ...]


def analyze(
    records: Iterable[InferenceRecord],
    variants: Sequence[str],
    config: AnalysisConfig | None = None,
    *,
    stopped: Collection[str] = (),
) -> Analysis:
    """Summary, comparisons and verdict of one experiment; `stopped` arms are reported but
    neither compared for the verdict nor waited for."""
    config = config or AnalysisConfig()
    control = config.control or variants[0]
    if control not in variants:
        raise ValueError(f"control: {control!r} is not one of the variants {list(variants)}")
    unknown = sorted(set(stopped) - set(variants))
    if unknown:
        raise ValueError(f"stopped: {unknown} are not variants {list(variants)}")
    stats = summarize(records, variants, alpha=config.alpha)
    comparisons = compare_to_control(stats, control, alpha=config.alpha)
    verdict = decide(stats, comparisons, control, config, stopped=stopped)
    stopped_in_order = tuple(v for v in variants if v in stopped)
    return Analysis(control, stats, comparisons, verdict, config, stopped_in_order)


def summarize(
    records: Iterable[InferenceRecord], variants: Sequence[str], *, alpha: float = 0.05
) -> dict[str, VariantStats]:
    """VariantStats per variant, in the order of `variants`; arms without records included.

    Raises ValueError for a record of an unknown variant or a repeated request id.
    """
    by_variant: dict[str, list[InferenceRecord]] = {v: [] for v in variants}
    seen: set[str] = set()
    for i, record in enumerate(records):
        if record.variant not in by_variant:
            raise ValueError(
                f"records[{i}].variant {record.variant!r} (request {record.request_id!r}) is "
                f"not one of the variants {list(variants)}"
            )
        if record.request_id in seen:
            raise ValueError(f"records[{i}].request_id {record.request_id!r} appears twice")
        seen.add(record.request_id)
        by_variant[record.variant].append(record)
    return {v: _variant_stats(v, rows, alpha) for v, rows in by_variant.items()}


def _variant_stats(variant: str, rows: list[InferenceRecord], alpha: float) -> VariantStats:
    with_feedback = [r for r in rows if r.success is not None]
    successes = sum(1 for r in with_feedback if r.success)
    latencies = np.array([r.latency_ms for r in rows], dtype=float)
    feedback_cost = math.fsum(r.cost for r in with_feedback)
    if not with_feedback:
        cost_per_success = None
    elif successes == 0:
        cost_per_success = math.inf
    else:
        cost_per_success = feedback_cost / successes
    return VariantStats(
        variant=variant,
        requests=len(rows),
        success=proportion(successes, len(with_feedback), alpha),
        policy_incident=_flag_proportion([r.policy_incident for r in rows], alpha),
        intervention=_flag_proportion([r.human_intervention for r in rows], alpha),
        latency_ms=mean_estimate(latencies.tolist(), alpha),
        latency_p50_ms=float(np.percentile(latencies, 50)) if rows else None,
        latency_p95_ms=float(np.percentile(latencies, 95)) if rows else None,
        prompt_tokens=sum(r.prompt_tokens for r in rows),
        completion_tokens=sum(r.completion_tokens for r in rows),
        total_cost=math.fsum(r.cost for r in rows),
        cost_per_successful_task=cost_per_success,
        rating=mean_estimate([r.rating for r in rows if r.rating is not None], alpha),
        judge_score=mean_estimate(
            [r.judge_score for r in rows if r.judge_score is not None], alpha
        ),
    )


def _flag_proportion(flags: list[bool | None], alpha: float) -> Proportion:
    known = [f for f in flags if f is not None]
    return proportion(sum(1 for f in known if f), len(known), alpha)


def proportion(count: int, n: int, alpha: float = 0.05) -> Proportion:
    low, high = wilson_interval(count, n, alpha)
    return Proportion(count, n, count / n if n else None, low, high)


def mean_estimate(values: Sequence[float], alpha: float = 0.05) -> MeanEstimate:
    """Mean with the t interval mean +- t(alpha, n - 1) * s / sqrt(n)."""
    n = len(values)
    if n == 0:
        return MeanEstimate(0, None, None, None, None)
    mean = math.fsum(values) / n
    if n < 2:
        return MeanEstimate(1, mean, None, None, None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_critical(alpha, n - 1) * std / math.sqrt(n)
    return MeanEstimate(n, mean, std, mean - half, mean + half)


def two_proportion_z_test(x1: int, n1: int, x0: int, n0: int) -> tuple[float, float]:
    """(z, two-sided p) of the pooled two-proportion z-test of x1/n1 against x0/n0.

    When both arms are all-success or all-failure the pooled variance is 0 and there is
    nothing to detect: (0.0, 1.0).
    """
    if n1 <= 0 or n0 <= 0:
        raise ValueError(f"both arms need n > 0, got n1={n1}, n0={n0}")
    pooled = (x1 + x0) / (n1 + n0)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n0))
    if se == 0.0:
        return 0.0, 1.0
    z = (x1 / n1 - x0 / n0) / se
    return z, normal_two_sided_p(z)


def newcombe_interval(
    x1: int, n1: int, x0: int, n0: int, alpha: float = 0.05
) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 - p0, from the Wilson intervals (l, u):
    [d - sqrt((p1 - l1)^2 + (u0 - p0)^2), d + sqrt((u1 - p1)^2 + (p0 - l0)^2)]."""
    p1, p0 = x1 / n1, x0 / n0
    l1, u1 = wilson_interval(x1, n1, alpha)
    l0, u0 = wilson_interval(x0, n0, alpha)
    d = p1 - p0
    return d - math.hypot(p1 - l1, u0 - p0), d + math.hypot(u1 - p1, p0 - l0)


def welch_test(a: MeanEstimate, control: MeanEstimate, alpha: float = 0.05) -> tuple[float, ...]:
    """(difference, ci_low, ci_high, p, df) of Welch's t-test of mean a minus mean control.

    Both need n >= 2. With zero variance in both arms: p is 1 for equal means, else 0.
    """
    if a.std is None or control.std is None or a.mean is None or control.mean is None:
        raise ValueError("Welch's test needs n >= 2 in both arms")
    d = a.mean - control.mean
    v1, v0 = a.std**2 / a.n, control.std**2 / control.n
    se = math.sqrt(v1 + v0)
    if se == 0.0:
        return d, d, d, (1.0 if d == 0 else 0.0), math.inf
    df = (v1 + v0) ** 2 / (v1**2 / (a.n - 1) + v0**2 / (control.n - 1))
    half = t_critical(alpha, df) * se
    return d, d - half, d + half, t_two_sided_p(d / se, df), df


def holm_adjust(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values, in the input order; None entries are left out of
    the family and stay None. Sorted ascending p(1) <= ... <= p(m):
    adjusted p(i) = max over j <= i of min(1, (m - j + 1) p(j))."""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(present)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def compare_to_control(
    stats: Mapping[str, VariantStats], control: str, *, alpha: float = 0.05
) -> list[MetricDifference]:
    """Every non-control arm against control on every metric, grouped by arm in `stats`
    order, metrics in PROPORTION_METRICS + MEAN_METRICS order; Holm per metric."""
    raw: dict[str, list[MetricDifference]] = {}
    others = [v for v in stats if v != control]
    for metric in PROPORTION_METRICS + MEAN_METRICS:
        compare = _compare_proportion if metric in PROPORTION_METRICS else _compare_mean
        rows = [compare(metric, stats[v], stats[control], alpha) for v in others]
        adjusted = holm_adjust([r.p_value for r in rows])
        raw[metric] = [replace(r, p_value_adjusted=p) for r, p in zip(rows, adjusted, strict=True)]
    by_arm = {v: [raw[m][k] for m in raw] for k, v in enumerate(others)}
    return [d for v in others for d in by_arm[v]]


_PROPORTION_OF = {
    "success_rate": lambda s: s.success,
    "policy_incident_rate": lambda s: s.policy_incident,
    "intervention_rate": lambda s: s.intervention,
}


def _compare_proportion(
    metric: str, arm: VariantStats, control: VariantStats, alpha: float
) -> MetricDifference:
    a, c = _PROPORTION_OF[metric](arm), _PROPORTION_OF[metric](control)
    test = "two-proportion z-test (pooled); Newcombe hybrid score interval"
    if a.n == 0 or c.n == 0:
        return MetricDifference(metric, arm.variant, control.variant, *[None] * 5, test)
    _, p = two_proportion_z_test(a.count, a.n, c.count, c.n)
    low, high = newcombe_interval(a.count, a.n, c.count, c.n, alpha)
    d = a.count / a.n - c.count / c.n
    return MetricDifference(metric, arm.variant, control.variant, d, low, high, p, None, test)


def _compare_mean(
    metric: str, arm: VariantStats, control: VariantStats, alpha: float
) -> MetricDifference:
    a, c = getattr(arm, metric), getattr(control, metric)
    test = "Welch's t-test"
    if a.std is None or c.std is None:
        return MetricDifference(metric, arm.variant, control.variant, *[None] * 5, test)
    d, low, high, p, _ = welch_test(a, c, alpha)
    return MetricDifference(metric, arm.variant, control.variant, d, low, high, p, None, test)


def decide(
    stats: Mapping[str, VariantStats],
    comparisons: Sequence[MetricDifference],
    control: str,
    config: AnalysisConfig,
    *,
    stopped: Collection[str] = (),
) -> Verdict:
    """The verdict on the primary metric, success rate.

    1. Compared arms are control and every arm not stopped. If any has fewer than
       `min_sample` records with feedback: "insufficient data: X of N ...", naming the arm
       with the fewest.
    2. Arms significantly better than control (Holm-adjusted p < alpha, difference > 0)
       are candidates; a candidate whose policy-incident rate is significantly higher than
       control's (unadjusted p < alpha: a missed harm costs more than a false alarm) is
       vetoed. The best remaining candidate by success rate wins.
    3. Without a candidate, control wins if every compared arm is significantly worse and
       none has a significantly lower policy-incident rate; otherwise "no significant
       difference". Vetoes are always spelled out.
    """
    alpha, need = config.alpha, config.min_sample
    compared = [v for v in stats if v != control and v not in stopped]
    if not compared:
        names = ", ".join(repr(v) for v in stats if v != control)
        return Verdict(
            False,
            None,
            f"no verdict: every arm besides control {control!r} is stopped ({names})",
            None,
        )
    short = sorted((stats[v].feedback_count, k, v) for k, v in enumerate([control, *compared]))
    short = [s for s in short if s[0] < need]
    if short:
        have, _, arm = short[0]
        more = f"; {len(short) - 1} more arm(s) short" if len(short) > 1 else ""
        text = f"insufficient data: {have} of {need} records with feedback in arm {arm!r}{more}"
        return Verdict(False, None, text, None)

    primary = {d.variant: d for d in comparisons if d.metric == PRIMARY_METRIC}
    incidents = {d.variant: d for d in comparisons if d.metric == "policy_incident_rate"}
    several = len(primary) > 1

    def significant(d: MetricDifference, adjusted: bool) -> bool:
        p = d.p_value_adjusted if adjusted else d.p_value
        return p is not None and d.difference is not None and p < alpha

    better = [v for v in compared if significant(primary[v], True) and primary[v].difference > 0]
    vetoed = [v for v in better if significant(incidents[v], False) and incidents[v].difference > 0]
    notes = [
        f"{v!r} has a significantly higher success rate but also a significantly higher "
        f"policy-incident rate ({_rate_pair(stats, v, control, 'policy_incident')}, "
        f"p = {incidents[v].p_value:.3g}), so it is not declared the winner"
        for v in vetoed
    ]
    eligible = [v for v in better if v not in vetoed]
    if eligible:
        winner = max(eligible, key=lambda v: stats[v].success.rate or 0.0)
        text = f"{winner!r} wins on success rate: " + _describe(
            primary[winner], stats, config, several
        )
        return Verdict(True, winner, _join(text, notes), primary[winner].p_value_adjusted)

    worse = [v for v in compared if significant(primary[v], True) and primary[v].difference < 0]
    if len(worse) == len(compared) and control not in stopped:
        safer = [
            v for v in compared if significant(incidents[v], False) and incidents[v].difference < 0
        ]
        p_behind = max(primary[v].p_value_adjusted for v in compared)
        details = "; ".join(_describe(primary[v], stats, config, several) for v in compared)
        if not safer:
            text = f"control {control!r} wins on success rate: every other arm is worse ({details})"
            return Verdict(True, control, _join(text, notes), p_behind)
        notes.append(
            f"control {control!r} has the best success rate but a significantly higher "
            f"policy-incident rate than {', '.join(repr(v) for v in safer)}, so no winner"
        )
        return Verdict(True, None, _join(f"no winner ({details})", notes), p_behind)

    best = min(compared, key=lambda v: primary[v].p_value_adjusted or 1.0)
    details = "; ".join(_describe(primary[v], stats, config, several) for v in compared)
    text = f"no significant difference in success rate against control {control!r} ({details})"
    return Verdict(True, None, _join(text, notes), primary[best].p_value_adjusted)


def _describe(
    d: MetricDifference, stats: Mapping[str, VariantStats], config: AnalysisConfig, holm: bool
) -> str:
    level = f"{1 - config.alpha:.0%}"
    p_name = "Holm-adjusted p" if holm else "p"
    assert d.difference is not None and d.ci_low is not None and d.ci_high is not None
    return (
        f"{_rate_pair(stats, d.variant, d.control, 'success')}, difference "
        f"{100 * d.difference:+.1f} pts, {level} CI [{100 * d.ci_low:+.1f}, "
        f"{100 * d.ci_high:+.1f}], {p_name} = {d.p_value_adjusted:.3g}"
    )


def _rate_pair(stats: Mapping[str, VariantStats], arm: str, control: str, attr: str) -> str:
    a, c = getattr(stats[arm], attr), getattr(stats[control], attr)
    return f"{arm!r} {a.rate:.1%} vs {control!r} {c.rate:.1%}"


def _join(text: str, notes: list[str]) -> str:
    return "; ".join([text, *notes])
