"""The policy-incident guardrail: which arms of a running experiment must stop serving.

Rule: an arm trips when it has at least `min_requests` records with a known incident flag
and the lower bound of the Wilson interval of its incident rate lies above
`max_policy_incident_rate`, i.e. we are confident (at 1 - alpha/2, one-sided) that its
true rate crosses the threshold. A bare point estimate above the threshold is not enough:
with a 1% threshold, 3 or more incidents in the first 200 requests (1.5%) happen to an arm
whose true rate is 1% about one time in three, and stopping it would end the experiment on noise. `min_requests`
is a floor on top, so that a handful of early reviews can never stop an arm alone.

Stopping any arm is allowed, control included; when every arm trips the caller should stop
the experiment (assignment refuses to run with every arm stopped). Pure: decides, never
stops anything itself.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from posttrain.experiments.probability import wilson_interval
from posttrain.experiments.stats import VariantStats


@dataclass(frozen=True)
class ArmStop:
    """An arm the guardrail stops, and the numbers behind it (for the audit log)."""

    variant: str
    incidents: int
    reviewed: int  # records with a known incident flag
    incident_rate: float
    ci_low: float
    threshold: float

    @property
    def reason(self) -> str:
        return (
            f"policy-incident rate of {self.variant!r} is {self.incident_rate:.2%} "
            f"({self.incidents} of {self.reviewed}); its lower confidence bound "
            f"{self.ci_low:.2%} is above the threshold {self.threshold:.2%}"
        )


def check_guardrail(
    stats: Mapping[str, VariantStats] | Iterable[VariantStats],
    max_policy_incident_rate: float,
    min_requests: int = 100,
    *,
    alpha: float = 0.05,
    already_stopped: Collection[str] = (),
) -> list[ArmStop]:
    """The arms to stop now, in the order given; arms in `already_stopped` are skipped."""
    if not 0.0 <= max_policy_incident_rate < 1.0:
        raise ValueError(
            f"max_policy_incident_rate must lie in [0, 1), got {max_policy_incident_rate}"
        )
    if min_requests < 1:
        raise ValueError(f"min_requests must be >= 1, got {min_requests}")
    arms = stats.values() if isinstance(stats, Mapping) else stats
    stops = []
    for arm in arms:
        flags = arm.policy_incident
        if arm.variant in already_stopped or flags.n < min_requests:
            continue
        low, _ = wilson_interval(flags.count, flags.n, alpha)
        if low > max_policy_incident_rate:
            stops.append(
                ArmStop(
                    arm.variant,
                    flags.count,
                    flags.n,
                    flags.count / flags.n,
                    low,
                    max_policy_incident_rate,
                )
            )
    return stops
