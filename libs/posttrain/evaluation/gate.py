"""The release gate: a declared policy applied to a report's metrics -> PASS or FAIL, with
one reason per rule that names the rule, the metric and the measured number.

Metric tables are `{scope: {name: value}}` where scope is "overall" (the whole suite) or
a tag. A policy names a metric as "name" (overall) or "name@scope".

Policy (YAML, every key optional):
    name: support-release
    min_metrics: {token_f1: 0.45, "pass_rate@long-context": 0.5, judge_score: 3.5}
    max_metrics: {perplexity: 40}
    max_regression:            # largest allowed drop vs production, in the metric's unit
      "*": 0.05                # any metric, any scope (tags and overall)
      policy: 0.0              # any metric on the policy tag
      "judge_score@*": 0.25    # one metric, any scope; "metric@tag" for one cell
    regression_metrics: []     # which metrics the regression rule compares (empty: every
                               # quality metric both reports have: case metrics, pass_rate)
    max_latency_p95_s: 2.0
    max_cost_per_successful_task: 0.002
    require_trusted_judge: true
    require_production: false  # true: FAIL when there is no production report to compare

The most specific max_regression key wins: metric@tag, metric@*, tag, *@tag, *.
A "regression" is a drop for higher-is-better metrics and a rise for lower-is-better ones.

Rules are registered units (GATE_RULES); each returns GateChecks. The verdict:
- FAIL when any check fails; a metric a rule names but the report lacks is a failure
  ("not measured"): a gate fails safe.
- Judge-based metrics (judge_score, judge_win_rate) with an untrusted judge, when
  require_trusted_judge: the check is still evaluated and reported. If it fails it
  fails the gate (fail safe); if it passes it is marked "not counted".
- PASS needs at least one counted, passing quality check (a min/max or regression
  check on a non-operational metric: not latency or cost). So a gate whose only
  quality criterion is an untrusted judge's score FAILs with the reason
  "no counted quality criterion", and an untrusted judge's score can't pass a gate on
  its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from posttrain.data.canonical import canonical_json
from posttrain.evaluation.metrics import (
    METRICS,
    PASS_RATE,
    ConfigError,
    config_from_mapping,
    is_judge_based,
    value_direction,
)
from posttrain.evaluation.metrics.base import setting

OVERALL = "overall"
PASS, FAIL = "PASS", "FAIL"
_EPS = 1e-9
# Run-time numbers that are not quality: a check on them never makes a gate pass alone.
OPERATIONAL = frozenset({*METRICS["latency"].outputs, *METRICS["cost"].outputs})

MetricTable = Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class GatePolicy:
    name: str = setting("default", "a name for people; the version is the content hash")
    min_metrics: dict[str, float] = setting({}, "metric[@scope] -> least allowed value")
    max_metrics: dict[str, float] = setting({}, "metric[@scope] -> largest allowed value")
    max_regression: dict[str, float] = setting(
        {}, "[metric@]scope (wildcard *) -> largest allowed regression vs production"
    )
    regression_metrics: tuple[str, ...] = setting(
        (), "metrics the regression rule compares (empty: all quality metrics)"
    )
    max_latency_p95_s: float | None = setting(None, "largest allowed p95 latency in seconds")
    max_cost_per_successful_task: float | None = setting(
        None, "largest allowed cost per successful task"
    )
    require_trusted_judge: bool = setting(
        True, "judge-based checks count only with a trusted judge"
    )
    require_production: bool = setting(False, "FAIL when no production report is given")

    def __post_init__(self) -> None:
        for key in ("min_metrics", "max_metrics", "max_regression"):
            for name, value in getattr(self, key).items():
                if (
                    not isinstance(name, str)
                    or isinstance(value, bool)
                    or not isinstance(value, int | float)
                ):
                    raise ValueError(f"{key}.{name}: a number is required")

    def to_json(self) -> dict[str, Any]:
        obj = asdict(self)
        obj["regression_metrics"] = list(self.regression_metrics)
        return obj

    @property
    def version(self) -> str:
        return hashlib.sha256(
            b"posttrain.gate_policy.v1\n" + canonical_json(self.to_json())
        ).hexdigest()


def load_gate_policy(source: str | Path | bytes | Mapping[str, Any]) -> GatePolicy:
    """A policy from a YAML file, YAML bytes or a mapping; ConfigError lists what is wrong."""
    if isinstance(source, Mapping):
        data: Any = dict(source)
    else:
        text = source if isinstance(source, bytes) else Path(source).read_bytes()
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError([("", f"not YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise ConfigError([("", "a gate policy is a mapping")])
    return config_from_mapping(GatePolicy, data)


@dataclass(frozen=True)
class GateCheck:
    rule: str
    subject: str  # metric@scope, or what the rule is about
    measured: float | None
    threshold: float | None
    passed: bool
    counted: bool = True  # False: reported only (untrusted judge, rule not applicable)
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateResult:
    verdict: str  # PASS | FAIL
    reasons: list[str]  # FAIL: why; PASS: the checks that passed
    checks: list[GateCheck] = field(default_factory=list)
    policy: str = ""  # name@version of the policy applied

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "checks": [c.to_json() for c in self.checks],
            "policy": self.policy,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> GateResult:
        return cls(
            obj["verdict"],
            list(obj["reasons"]),
            [GateCheck(**c) for c in obj.get("checks", [])],
            obj.get("policy", ""),
        )


@dataclass(frozen=True)
class GateInputs:
    candidate: MetricTable
    production: MetricTable | None
    judge_trusted: bool


def _split(key: str) -> tuple[str, str]:
    metric, _, scope = key.partition("@")
    return metric, scope or OVERALL


def _fmt(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.4g}"


def _threshold_check(
    rule: str, key: str, measured: float | None, limit: float, at_least: bool
) -> GateCheck:
    if measured is None:
        return GateCheck(
            rule, key, None, limit, False, message=f"{rule} {key}: not measured (limit {limit:g})"
        )
    passed = measured >= limit - _EPS if at_least else measured <= limit + _EPS
    op = (">=" if passed else "<") if at_least else ("<=" if passed else ">")
    return GateCheck(
        rule, key, measured, limit, passed, message=f"{rule} {key}: {_fmt(measured)} {op} {limit:g}"
    )


def _lookup(table: MetricTable, key: str) -> float | None:
    metric, scope = _split(key)
    return table.get(scope, {}).get(metric)


def rule_min_metrics(policy: GatePolicy, inputs: GateInputs) -> list[GateCheck]:
    return [
        _threshold_check(
            "min_metric",
            key if "@" in key else f"{key}@{OVERALL}",
            _lookup(inputs.candidate, key),
            limit,
            True,
        )
        for key, limit in sorted(policy.min_metrics.items())
    ]


def rule_max_metrics(policy: GatePolicy, inputs: GateInputs) -> list[GateCheck]:
    return [
        _threshold_check(
            "max_metric",
            key if "@" in key else f"{key}@{OVERALL}",
            _lookup(inputs.candidate, key),
            limit,
            False,
        )
        for key, limit in sorted(policy.max_metrics.items())
    ]


def rule_max_latency(policy: GatePolicy, inputs: GateInputs) -> list[GateCheck]:
    if policy.max_latency_p95_s is None:
        return []
    key = f"latency_p95_s@{OVERALL}"
    return [
        _threshold_check(
            "max_latency_p95_s",
            key,
            _lookup(inputs.candidate, key),
            policy.max_latency_p95_s,
            False,
        )
    ]


def rule_max_cost(policy: GatePolicy, inputs: GateInputs) -> list[GateCheck]:
    if policy.max_cost_per_successful_task is None:
        return []
    key = f"cost_per_successful_task@{OVERALL}"
    return [
        _threshold_check(
            "max_cost_per_successful_task",
            key,
            _lookup(inputs.candidate, key),
            policy.max_cost_per_successful_task,
            False,
        )
    ]


def regression_limit(limits: Mapping[str, float], metric: str, scope: str) -> float | None:
    """The most specific limit: metric@scope, metric@*, scope, *@scope, *, *@*."""
    for key in (f"{metric}@{scope}", f"{metric}@*", scope, f"*@{scope}", "*", "*@*"):
        if key in limits:
            return limits[key]
    return None


def _quality_metric(name: str) -> bool:
    return name == PASS_RATE or (name in METRICS and METRICS[name].kind == "case")


def rule_max_regression(policy: GatePolicy, inputs: GateInputs) -> list[GateCheck]:
    if not policy.max_regression:
        return []
    if inputs.production is None:
        if policy.require_production:
            return [
                GateCheck(
                    "max_regression",
                    "production",
                    None,
                    None,
                    False,
                    message="max_regression: no production report to compare with (require_production)",
                )
            ]
        return [
            GateCheck(
                "max_regression",
                "production",
                None,
                None,
                True,
                counted=False,
                message="max_regression: no production report; not applied",
            )
        ]
    checks = []
    for scope in sorted(set(inputs.candidate) & set(inputs.production)):
        candidate, production = inputs.candidate[scope], inputs.production[scope]
        for metric in sorted(set(candidate) & set(production)):
            wanted = (
                metric in policy.regression_metrics
                if policy.regression_metrics
                else _quality_metric(metric)
            )
            higher_better = value_direction(metric)
            limit = regression_limit(policy.max_regression, metric, scope)
            if not wanted or higher_better is None or limit is None:
                continue
            delta = candidate[metric] - production[metric]
            regression = -delta if higher_better else delta
            passed = regression <= limit + _EPS
            op = "<=" if passed else ">"
            checks.append(
                GateCheck(
                    "max_regression",
                    f"{metric}@{scope}",
                    regression,
                    limit,
                    passed,
                    message=(
                        f"max_regression {metric}@{scope}: {_fmt(candidate[metric])} vs production "
                        f"{_fmt(production[metric])}, regression {regression:.4g} {op} {limit:g}"
                    ),
                )
            )
    return checks


GATE_RULES: dict[str, Callable[[GatePolicy, GateInputs], list[GateCheck]]] = {
    "min_metric": rule_min_metrics,
    "max_metric": rule_max_metrics,
    "max_regression": rule_max_regression,
    "max_latency_p95_s": rule_max_latency,
    "max_cost_per_successful_task": rule_max_cost,
}
_QUALITY_RULES = ("min_metric", "max_metric", "max_regression")


def _discount_untrusted(check: GateCheck) -> GateCheck:
    if not check.passed or not check.counted:
        return check
    return GateCheck(
        check.rule,
        check.subject,
        check.measured,
        check.threshold,
        check.passed,
        counted=False,
        message=f"{check.message} (judge untrusted: not counted)",
    )


def evaluate_gate(
    policy: GatePolicy,
    candidate: MetricTable,
    production: MetricTable | None = None,
    *,
    judge_trusted: bool = False,
) -> GateResult:
    """PASS or FAIL for the candidate's metrics under the policy (see the module doc)."""
    inputs = GateInputs(candidate, production, judge_trusted)
    checks: list[GateCheck] = []
    for rule in GATE_RULES.values():
        for check in rule(policy, inputs):
            metric = check.subject.partition("@")[0]
            if is_judge_based(metric) and policy.require_trusted_judge and not judge_trusted:
                check = _discount_untrusted(check)
            checks.append(check)
    failed = [c.message for c in checks if not c.passed]
    quality = [
        c
        for c in checks
        if c.rule in _QUALITY_RULES and c.subject.partition("@")[0] not in OPERATIONAL
    ]
    # A failed quality check already says why; otherwise one must have counted as a pass.
    if not any(not c.passed for c in quality) and not any(c.counted for c in quality):
        untrusted = any(
            not c.counted and c.passed and is_judge_based(c.subject.partition("@")[0])
            for c in checks
        )
        failed.append(
            "no counted quality criterion: "
            + (
                "only judge-based criteria passed and the judge is untrusted; an untrusted judge's scores can't pass a gate on their own"
                if untrusted
                else "the policy has no quality threshold or regression check that applied"
            )
        )
    label = f"{policy.name}@{policy.version[:12]}"
    if failed:
        return GateResult(FAIL, failed, checks, label)
    return GateResult(PASS, [c.message for c in checks], checks, label)
