"""What the pages show, assembled from the services' answers (no RPC here: plain data
in, plain data out, so it is tested without a server)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from posttrain.v1 import common_pb2, evaluation_pb2, registry_pb2, training_pb2

# What each console action needs, mirroring the services' own rules (see their servicer
# docstrings). Used only to grey out buttons; the service still decides on every call.
ACTION_ROLES: dict[str, tuple[str, ...]] = {
    "approve": ("approver",),
    "reject": ("approver",),
    "cancel_job": ("trainer",),
    "promote": ("operator",),
    "rollback": ("operator",),
    "label": ("rater",),
    "stop_experiment": ("operator",),
}

TERMINAL_JOB_STATES = frozenset(
    {
        training_pb2.JOB_STATE_SUCCEEDED,
        training_pb2.JOB_STATE_FAILED,
        training_pb2.JOB_STATE_CANCELLED,
    }
)

# Review keys 1..5 pick the rubric score; the label says it in words.
SCORE_LABELS = {1: "bad", 2: "poor", 3: "acceptable", 4: "good", 5: "excellent"}


def enum_name(enum, value: int, prefix: str) -> str:
    """'APPROVAL_STATE_PENDING' -> 'pending'."""
    name = enum.Name(value) if value in enum.values() else str(value)
    return name.removeprefix(prefix).lower().replace("_", " ")


def approval_state(value: int) -> str:
    return enum_name(common_pb2.ApprovalState, value, "APPROVAL_STATE_")


def job_state(value: int) -> str:
    return enum_name(training_pb2.JobState, value, "JOB_STATE_")


def verdict(value: int) -> str:
    if value == common_pb2.GATE_VERDICT_UNSPECIFIED:
        return "pending"  # no evaluation.completed yet
    return enum_name(common_pb2.GateVerdict, value, "GATE_VERDICT_")


def stage_name(value: int) -> str:
    return enum_name(registry_pb2.Stage, value, "STAGE_")


def when(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    return datetime.fromtimestamp(ts.seconds).strftime("%Y-%m-%d %H:%M:%S")


def number(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.{digits}g}"


@dataclass(frozen=True)
class FourEyes:
    """Who uploaded a version and whether this person may approve it, in words."""

    uploaded_by: str
    may_review: bool
    why_not: str


def four_eyes(version, me_name: str, may_approve: bool) -> FourEyes:
    if version.state != common_pb2.APPROVAL_STATE_PENDING:
        return FourEyes(version.uploaded_by, False, f"already {approval_state(version.state)}")
    if not may_approve:
        return FourEyes(version.uploaded_by, False, "needs the approver role")
    if me_name == version.uploaded_by:
        return FourEyes(
            version.uploaded_by, False, "you uploaded this version: another approver must review it"
        )
    return FourEyes(version.uploaded_by, True, "")


@dataclass(frozen=True)
class MetricRow:
    name: str
    tag: str
    value: float
    production: float | None

    @property
    def delta(self) -> float | None:
        return None if self.production is None else self.value - self.production


def metric_rows(
    report: evaluation_pb2.EvaluationReport,
) -> tuple[list[MetricRow], dict[str, list[MetricRow]]]:
    """Whole-suite metrics, and per-tag metrics by tag (each vs production when known)."""
    whole: list[MetricRow] = []
    by_tag: dict[str, list[MetricRow]] = {}
    for m in report.metrics:
        row = MetricRow(
            m.name, m.tag, m.value, m.production_value if m.has_production_value else None
        )
        if m.tag:
            by_tag.setdefault(m.tag, []).append(row)
        else:
            whole.append(row)
    return whole, dict(sorted(by_tag.items()))


def loss_points(progress: list[training_pb2.JobProgress]) -> list[tuple[int, float]]:
    """(step, loss) once per step, in step order."""
    by_step: dict[int, float] = {}
    for p in progress:
        if p.step > 0 and p.loss and math.isfinite(p.loss):
            by_step[p.step] = p.loss
    return sorted(by_step.items())


def split_use_case(route: str) -> tuple[str, str]:
    """A gateway route ("x" or "x/staging") as (use case, stage)."""
    use_case, _, stage = route.partition("/")
    return use_case, stage or "production"
