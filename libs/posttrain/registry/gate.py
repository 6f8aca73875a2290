"""Release-gate verdicts: what the evaluator said about each version (evaluation.completed),
and whether a version may go to production.

The rule: the latest report of every suite that evaluated the version must PASS, and
there must be at least one. A newer passing run of one suite does not hide an older
failing run of another.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from posttrain.db import utcnow
from posttrain.registry import audit, lineage, names
from posttrain.registry.tables import EvaluationRow, ModelVersionRow
from posttrain.rpc.errors import FieldViolation, InvalidArgument, NotFound
from posttrain.v1 import common_pb2, events_pb2


@dataclass(frozen=True)
class GateStatus:
    verdict: str  # "pass" | "fail" | "" (no verdict yet)
    reasons: list[str] = field(default_factory=list)  # why not pass; empty when it passes
    reports: list[str] = field(default_factory=list)  # the report ids the verdict rests on

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"


def record_evaluation(
    session: Session, event: events_pb2.EvaluationCompleted, *, actor: str
) -> tuple[EvaluationRow, bool]:
    """Store a verdict; (row, created). A report seen before is a no-op."""
    problems = [
        FieldViolation(f, "is required")
        for f, v in (("report_id", event.report_id), ("model_version_id", event.model_version_id))
        if not v
    ]
    if event.verdict == common_pb2.GATE_VERDICT_UNSPECIFIED:
        problems.append(FieldViolation("verdict", "is required (PASS or FAIL)"))
    if problems:
        raise InvalidArgument(violations=problems)
    existing = session.scalar(
        sa.select(EvaluationRow).where(EvaluationRow.report_id == event.report_id)
    )
    if existing is not None:
        return existing, False
    version = session.get(ModelVersionRow, event.model_version_id)
    if version is None:
        raise NotFound("model version", event.model_version_id)
    row = EvaluationRow(
        report_id=event.report_id,
        model_version_id=version.id,
        suite=event.suite,
        suite_version=event.suite_version,
        verdict=names.verdict_word(event.verdict),
        reasons=list(event.reasons),
        metrics=dict(event.metrics),
        report=(
            {
                "uri": event.report.uri,
                "sha256": event.report.sha256,
                "size_bytes": event.report.size_bytes,
                "media_type": event.report.media_type,
            }
            if event.report.uri
            else None
        ),
        recorded_at=utcnow(),
    )
    session.add(row)
    version_node = names.node_id(names.MODEL_VERSION, version.id)
    report_node = lineage.ensure_node(
        session,
        names.EVALUATION,
        event.report_id,
        label=f"{event.suite or 'evaluation'} {event.report_id[:12]}",
        tenant=version.tenant,
        attributes={"suite": event.suite, "verdict": row.verdict, "report": event.report.uri},
    )
    lineage.add_edge(session, version_node, report_node, "evaluation")
    audit.record(
        session,
        actor=actor,
        action="evaluation.recorded",
        subject=version_node,
        tenant=version.tenant,
        reason="; ".join(row.reasons),
        details={"report_id": row.report_id, "suite": row.suite, "verdict": row.verdict},
    )
    return row, True


def status(session: Session, version_id: str) -> GateStatus:
    return statuses(session, [version_id])[version_id]


def statuses(session: Session, version_ids: Iterable[str]) -> dict[str, GateStatus]:
    ids = list(dict.fromkeys(version_ids))
    latest: dict[str, dict[str, EvaluationRow]] = {i: {} for i in ids}
    if ids:
        rows = session.scalars(
            sa.select(EvaluationRow)
            .where(EvaluationRow.model_version_id.in_(ids))
            .order_by(EvaluationRow.id)
        )
        for row in rows:
            latest[row.model_version_id][row.suite] = row  # later rows replace earlier ones
    return {i: _judge(i, latest[i]) for i in ids}


def _judge(version_id: str, by_suite: dict[str, EvaluationRow]) -> GateStatus:
    if not by_suite:
        return GateStatus(
            "",
            [
                f"no release-gate verdict from the evaluator for {version_id} yet "
                f"(no evaluation.completed recorded)"
            ],
        )
    reports = [r.report_id for r in by_suite.values()]
    failed = [r for r in by_suite.values() if r.verdict != "pass"]
    if not failed:
        return GateStatus("pass", [], reports)
    reasons = [
        f"the release gate FAILED in suite {r.suite or '(unnamed)'!r} (report {r.report_id})"
        + (": " + ", ".join(r.reasons) if r.reasons else "")
        for r in failed
    ]
    return GateStatus("fail", reasons, reports)
