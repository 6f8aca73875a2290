"""Reports: recording one (its row, its review items and evaluation.completed, in the
caller's one transaction) and reading them back, tenant by tenant.

At most one report per (tenant, model version, suite version, seed) (a version has one
tenant; a base model "base:<name>" one report per tenant): `record` returns the row
already there instead of adding a second, and the table's unique constraint stops a
concurrent writer that got past that check (its transaction fails; the caller retries
and finds the row).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.orm import Session

from posttrain.db import utcnow
from posttrain.evaluation import EvaluationResult, sample_for_review
from posttrain.evaluator.models import base_model_name
from posttrain.evaluator.tables import ReportRow, ReviewItemRow
from posttrain.events import add_to_outbox, topics
from posttrain.rpc.errors import NotFound
from posttrain.storage import ArtifactRef
from posttrain.v1 import common_pb2, evaluation_pb2

TRIGGER_EVENT = "model.registered"
TRIGGER_RPC = "RunEvaluation"
TRIGGER_BASELINE = "baseline"  # a production version evaluated to compare a candidate with
PRODUCER = "evaluator"

# emit(event_type, payload, aggregate_id): stage an event in the caller's transaction.
Emit = Callable[[str, Message, str], object]


@dataclass(frozen=True)
class PublishedReport:
    """An evaluation whose report.json/report.html are stored, not yet recorded."""

    result: EvaluationResult
    tenant: str
    suite_base_version: str  # the stored suite's version (before max_cases_per_tag)
    artifact: ArtifactRef  # the folder evaluations/<tenant>/<model_version_id>/<report_id>
    json_report: ArtifactRef
    html_report: ArtifactRef
    loaded: bool  # False: the model could not be loaded (a FAIL without outputs)
    production_model_version_id: str
    trigger: str
    requested_by: str

    @property
    def seed(self) -> int:
        return self.result.provenance.seed


def outbox_emitter(session: Session, *, correlation_id: str = "") -> Emit:
    def emit(event_type: str, payload: Message, aggregate_id: str):
        return add_to_outbox(
            session,
            event_type,
            payload,
            producer=PRODUCER,
            aggregate_id=aggregate_id,
            correlation_id=correlation_id,
        )

    return emit


def find(
    session: Session, tenant: str, model_version_id: str, suite_version: str, seed: int
) -> ReportRow | None:
    """The tenant's report of (version, suite version, seed). A model version belongs to
    one tenant; a base model ("base:<name>") has a report per tenant."""
    return session.scalar(
        sa.select(ReportRow).where(
            ReportRow.tenant == tenant,
            ReportRow.model_version_id == model_version_id,
            ReportRow.suite_version == suite_version,
            ReportRow.seed == seed,
        )
    )


def latest_for(session: Session, model_version_id: str, suite_version: str) -> ReportRow | None:
    """The newest report of a version on a suite version, whatever its seed or judge."""
    return session.scalar(
        sa.select(ReportRow)
        .where(
            ReportRow.model_version_id == model_version_id,
            ReportRow.suite_version == suite_version,
        )
        .order_by(ReportRow.created_at.desc(), ReportRow.id.desc())
        .limit(1)
    )


def record(
    session: Session,
    emit: Emit,
    published: PublishedReport,
    *,
    review_sample_size: int,
) -> tuple[ReportRow, bool]:
    """Insert the report, sample its outputs into the review queue and stage
    evaluation.completed; (row, created). A report already there is returned as it is."""
    result = published.result
    p = result.provenance
    existing = find(session, published.tenant, p.model_version_id, p.suite_version, p.seed)
    if existing is not None:
        return existing, False
    now = utcnow()
    row = ReportRow(
        id=result.report_id,
        tenant=published.tenant,
        model_version_id=p.model_version_id,
        suite=p.suite,
        suite_version=p.suite_version,
        suite_base_version=published.suite_base_version,
        seed=p.seed,
        verdict=result.verdict or "FAIL",
        reasons=list(result.gate.reasons) if result.gate else ["no gate policy applied"],
        metrics=result.flat_metrics(),
        judge_id=p.judge_id,
        judge_version=p.judge_version,
        judge_trusted=result.judge_trusted,
        anchor_set_version=p.anchor_set_version,
        gate_policy=p.gate_policy,
        code_version=p.code_version,
        production_model_version_id=published.production_model_version_id,
        production_report_id=result.production_report_id,
        loaded=published.loaded,
        artifact=ref_dict(published.artifact),
        json_report=ref_dict(published.json_report),
        html_report=ref_dict(published.html_report),
        trigger=published.trigger,
        requested_by=published.requested_by[:300],
        report=_proto(published, now).SerializeToString(),
        created_at=now,
    )
    session.add(row)
    session.flush()  # the unique guard fires here, before anything else is staged
    for item in sample_for_review(result, review_sample_size, seed=p.seed):
        if session.get(ReviewItemRow, item.id) is not None:
            continue
        session.add(
            ReviewItemRow(
                id=item.id,
                tenant=published.tenant,
                report_id=item.report_id,
                model_version_id=item.model_version_id,
                suite=p.suite,
                suite_version=item.suite_version,
                case_id=item.case_id,
                prompt=item.prompt,
                output=item.output,
                reference=item.reference,
                tags=list(item.tags),
                judge_score=item.judge_score,
                created_at=now,
            )
        )
    if base_model_name(p.model_version_id) is not None:
        # A base model is no release candidate: the registry has no version to gate.
        return row, True
    emit(
        topics.EVALUATION_COMPLETED,
        result.to_event(report=published.artifact.to_proto()),
        p.model_version_id,
    )
    return row, True


def _proto(published: PublishedReport, created_at: dt.datetime) -> evaluation_pb2.EvaluationReport:
    result = published.result
    report = result.to_proto(
        json_report=published.json_report.to_proto(), html_report=published.html_report.to_proto()
    )
    report.created_at.FromDatetime(created_at)
    report.tenant = published.tenant
    report.production_model_version_id = published.production_model_version_id
    report.production_report_id = result.production_report_id
    report.artifact.CopyFrom(published.artifact.to_proto())
    report.trigger = published.trigger
    report.requested_by = published.requested_by
    if not result.gate:
        report.verdict = common_pb2.GATE_VERDICT_FAIL
        report.reasons.append("no gate policy applied")
    return report


def report_proto(row: ReportRow) -> evaluation_pb2.EvaluationReport:
    return evaluation_pb2.EvaluationReport.FromString(row.report)


def get(session: Session, report_id: str, *, tenant_scope: str | None) -> ReportRow:
    """The report, if the scope may see it (None: any tenant); NotFound otherwise."""
    row = session.get(ReportRow, report_id) if report_id else None
    if row is None or (tenant_scope is not None and row.tenant != tenant_scope):
        raise NotFound("report", report_id)
    return row


def list_reports(
    session: Session,
    *,
    tenant_scope: str | None,
    model_version_id: str = "",
    suite: str = "",
    offset: int = 0,
    limit: int = 50,
) -> tuple[list[ReportRow], int]:
    where = []
    if tenant_scope is not None:
        where.append(ReportRow.tenant == tenant_scope)
    if model_version_id:
        where.append(ReportRow.model_version_id == model_version_id)
    if suite:
        where.append(ReportRow.suite == suite)
    total = session.scalar(sa.select(sa.func.count()).select_from(ReportRow).where(*where))
    rows = session.scalars(
        sa.select(ReportRow)
        .where(*where)
        .order_by(ReportRow.created_at.desc(), ReportRow.id.desc())
        .offset(offset)
        .limit(limit)
    ).all()
    return list(rows), total or 0


def ref_dict(ref: ArtifactRef) -> dict:
    return {
        "uri": ref.uri,
        "sha256": ref.sha256,
        "size_bytes": ref.size_bytes,
        "media_type": ref.media_type,
    }


def ref_of(data: dict) -> ArtifactRef:
    return ArtifactRef(**data)
