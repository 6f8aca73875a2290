"""Prometheus metrics of the gateway (prometheus_client's default registry; the service
exposes them on settings.metrics_port). A route label is "<triton model>/<lora name>"
("/" alone never: the base is "<model>/base")."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter(
    "posttrain_gateway_requests_total",
    "Generate / GenerateStream calls by outcome (gRPC status name)",
    ["tenant", "use_case", "route", "variant", "code"],
)
LATENCY = Histogram(
    "posttrain_gateway_request_seconds",
    "time from receiving a generation request to having its answer",
    ["use_case", "route"],
    buckets=_LATENCY_BUCKETS,
)
TOKENS = Counter(
    "posttrain_gateway_tokens_total", "tokens served", ["tenant", "use_case", "direction"]
)
REJECTED = Counter(
    "posttrain_gateway_rejected_total",
    "requests refused before reaching Triton",
    ["tenant", "reason"],
)
DEPLOYMENTS = Counter(
    "posttrain_gateway_deployments_total", "deployments handled", ["kind", "outcome"]
)
DEPLOY_SECONDS = Histogram(
    "posttrain_gateway_deploy_seconds",
    "time to make a deployment live (download, install or load, smoke request)",
    ["kind"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
FEEDBACK = Counter("posttrain_gateway_feedback_total", "feedback records", ["tenant"])
ARMS_STOPPED = Counter(
    "posttrain_gateway_experiment_arms_stopped_total", "arms stopped by the guardrail", []
)
RECORD_FAILURES = Counter(
    "posttrain_gateway_record_failures_total",
    "inference records that could not be stored (the request itself was answered)",
    [],
)
JUDGE_GRADES = Counter(
    "posttrain_gateway_judge_grades_total",
    "experiment requests handed to the judge, by outcome: graded, no_grade (the reply had "
    "none), failed (the judge raised), dropped (queue full), lost (its record missing or not writable)",
    ["outcome"],
)
JUDGE_QUEUED = Gauge(
    "posttrain_gateway_judge_queued", "experiment requests waiting for the judge", []
)


def route_label(triton_model: str, lora_name: str) -> str:
    return f"{triton_model}/{lora_name or 'base'}"
