"""Comparison runs in the trainer's database: creating one (a row per candidate, each an
ordinary training job submitted through JobBook in the same transaction), reading them,
and the collector that follows the candidates to the end and writes the report.

The collector is a poll loop over the RUNNING comparisons. For each candidate:
TRAINING (its job runs; cancelled when over its own or the comparison's time budget) ->
EVALUATING (trained; the registry registers it from training.completed, the evaluator
evaluates it from model.registered: the collector asks both) -> MEASURED; or FAILED /
CANCELLED / OUT_OF_BUDGET from its job. When every candidate has ended it builds the
report (posttrain.comparison.report), publishes it under
comparisons/<tenant>/<id>/report and marks the comparison COMPLETED. Every step reads its
state from the database and changes it in one transaction, so a restarted (or a second)
collector carries on where the last one stopped; the report's content depends only on
that state, so publishing it twice is a no-op.

No gRPC here: the registry and the evaluator are Protocols the service implements.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from posttrain.comparison.measurements import (
    CANCELLED,
    FAILED,
    MEASURED,
    OUT_OF_BUDGET,
    CandidateMeasurement,
    DecisionContext,
)
from posttrain.comparison.report import HTML_NAME, JSON_NAME, build_report, render_html
from posttrain.comparison.rules import load_rules
from posttrain.comparison.tables import CandidateRow, ComparisonRow
from posttrain.db import session_scope, utcnow
from posttrain.rpc.errors import NotFound
from posttrain.storage import ArtifactRef, ArtifactStore
from posttrain.trainer import CANCELLED as JOB_CANCELLED
from posttrain.trainer import FAILED as JOB_FAILED
from posttrain.trainer import SUCCEEDED as JOB_SUCCEEDED
from posttrain.trainer import Emit, JobBook, JobRequest, TrainingJobRow, artifact_refs
from posttrain.trainer.jobs import as_utc
from posttrain.v1 import common_pb2, evaluation_pb2, registry_pb2

log = logging.getLogger(__name__)

RUNNING, COMPLETED = "RUNNING", "COMPLETED"
TRAINING, EVALUATING = "TRAINING", "EVALUATING"
ENDED = frozenset({MEASURED, FAILED, CANCELLED, OUT_OF_BUDGET})
CANDIDATE_STATES = (TRAINING, EVALUATING, MEASURED, FAILED, CANCELLED, OUT_OF_BUDGET)


def new_comparison_id() -> str:
    return uuid.uuid4().hex


def candidate_output_name(name: str, comparison_id: str, candidate: str) -> str:
    return f"{name}-cmp-{comparison_id[:8]}-{candidate}"


def cancelled_by(comparison_id: str) -> str:
    return f"comparison {comparison_id}"


@dataclass(frozen=True)
class CandidatePlan:
    name: str
    method: str
    method_config: dict[str, str]
    hyperparameters: dict[str, str]
    job: JobRequest  # its output_name is candidate_output_name(...)


@dataclass(frozen=True)
class ComparisonPlan:
    """A checked CreateComparison."""

    id: str
    tenant: str
    name: str
    base_model: str
    dataset: str
    dataset_version: str
    dataset_rows: int
    budget: dict[str, float]  # max_steps, max_candidate_wall_s, max_total_wall_s
    serving: dict[str, Any]  # tenants, fast_rollback, latency_budget_ms
    rules_yaml: str
    rules_source: str
    created_by: str
    correlation_id: str
    candidates: Sequence[CandidatePlan]


class ComparisonBook:
    """Comparisons in the transaction of `session`; jobs submitted through `emit`."""

    def __init__(self, session: Session, emit: Emit | None = None) -> None:
        self.session = session
        self.emit = emit

    def create(self, plan: ComparisonPlan) -> ComparisonRow:
        now = utcnow()
        row = ComparisonRow(
            id=plan.id,
            tenant=plan.tenant,
            name=plan.name,
            state=RUNNING,
            base_model=plan.base_model,
            dataset=plan.dataset,
            dataset_version=plan.dataset_version,
            dataset_rows=plan.dataset_rows,
            budget=dict(plan.budget),
            serving=dict(plan.serving),
            rules_yaml=plan.rules_yaml,
            rules_source=plan.rules_source,
            created_by=plan.created_by,
            correlation_id=plan.correlation_id,
            recommendation={},
            report={},
            created_at=now,
            updated_at=now,
        )
        self.session.add(row)
        self.session.flush()
        jobs = JobBook(self.session, self.emit)
        for position, candidate in enumerate(plan.candidates):
            job = jobs.submit(candidate.job)
            self.session.add(
                CandidateRow(
                    comparison_id=plan.id,
                    position=position,
                    name=candidate.name,
                    method=candidate.method,
                    method_config=dict(candidate.method_config),
                    hyperparameters=dict(candidate.hyperparameters),
                    job_id=job.job_id,
                    output_name=job.output_name,
                    state=TRAINING,
                    model_version_id="",
                    evaluation_report_id="",
                    gate_verdict="",
                    note="",
                    measurement={},
                    updated_at=now,
                )
            )
        self.session.flush()
        return row

    def get(self, comparison_id: str, *, tenant_scope: str | None) -> ComparisonRow:
        """NotFound also for another tenant's comparison (None: every tenant)."""
        row = self.session.get(ComparisonRow, comparison_id, populate_existing=True)
        if row is None or (tenant_scope is not None and row.tenant != tenant_scope):
            raise NotFound("comparison", comparison_id)
        return row

    def candidates(self, comparison_id: str) -> list[CandidateRow]:
        return list(
            self.session.scalars(
                sa.select(CandidateRow)
                .where(CandidateRow.comparison_id == comparison_id)
                .order_by(CandidateRow.position)
                .execution_options(populate_existing=True)
            )
        )

    def list(
        self, *, tenant_scope: str | None, offset: int, limit: int
    ) -> tuple[list[ComparisonRow], int]:
        where = [] if tenant_scope is None else [ComparisonRow.tenant == tenant_scope]
        total = self.session.scalar(
            sa.select(sa.func.count()).select_from(ComparisonRow).where(*where)
        )
        rows = self.session.scalars(
            sa.select(ComparisonRow)
            .where(*where)
            .order_by(ComparisonRow.created_at.desc(), ComparisonRow.id)
            .offset(offset)
            .limit(limit)
        ).all()
        return list(rows), int(total or 0)

    def running_ids(self) -> list[str]:
        return list(
            self.session.scalars(
                sa.select(ComparisonRow.id)
                .where(ComparisonRow.state == RUNNING)
                .order_by(ComparisonRow.created_at)
            )
        )


# ------------------------------------------------------------------ the collector


class ModelVersionLookup(Protocol):
    def version_for_job(
        self, name: str, job_id: str, tenant: str
    ) -> registry_pb2.ModelVersion | None: ...


class ReportLookup(Protocol):
    def report_for(
        self, model_version_id: str, tenant: str
    ) -> evaluation_pb2.EvaluationReport | None: ...


@dataclass
class CollectorOptions:
    poll_s: float = 5.0
    evaluation_timeout_s: float = 1800.0  # after training, how long to wait for a report
    producer: str = "trainer"


@dataclass
class ComparisonCollector:
    """Follows RUNNING comparisons to their report (see the module docstring).
    start()/stop() like any BackgroundWorker of service_main; run_once() for tests."""

    engine: Engine
    store: ArtifactStore
    versions: ModelVersionLookup
    reports: ReportLookup
    emit_for: Callable[[Session, str], Emit]  # (session, correlation id) -> outbox emit
    options: CollectorOptions = field(default_factory=CollectorOptions)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ComparisonCollector:
        self._thread = threading.Thread(target=self._loop, name="comparisons", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.wait(self.options.poll_s):
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - the next poll tries again
                log.exception("comparison collector pass failed")

    def run_once(self) -> list[str]:
        """One pass over the RUNNING comparisons; returns the ids it completed."""
        with Session(self.engine) as session:
            ids = ComparisonBook(session).running_ids()
        return [cid for cid in ids if self.advance(cid)]

    def advance(self, comparison_id: str) -> bool:
        """Move each candidate of the comparison on as far as it can go now; complete the
        comparison when all have ended. Returns whether it completed now."""
        with Session(self.engine) as session:
            book = ComparisonBook(session)
            cmp = book.get(comparison_id, tenant_scope=None)
            if cmp.state != RUNNING:
                return False
            positions = [(c.position, c.state) for c in book.candidates(comparison_id)]
            spent = (utcnow() - as_utc(cmp.created_at)).total_seconds()
            total_limit = float(cmp.budget.get("max_total_wall_s") or 0)
        over_total = bool(total_limit) and spent > total_limit
        for position, state in positions:
            try:
                if state == TRAINING:
                    self._training(comparison_id, position, over_total)
                elif state == EVALUATING:
                    self._evaluating(comparison_id, position, over_total)
            except Exception as exc:  # noqa: BLE001 - a lookup failed: try on the next pass
                log.warning("comparison %s candidate %s: %s", comparison_id, position, exc)
        return self._complete_if_done(comparison_id)

    def _training(self, comparison_id: str, position: int, over_total: bool) -> None:
        with session_scope(self.engine) as session:
            cmp = session.get(ComparisonRow, comparison_id)
            cand = session.get(CandidateRow, (comparison_id, position))
            job = session.get(TrainingJobRow, cand.job_id)
            if cand.state != TRAINING or job is None:
                return
            now = utcnow()
            if job.state == JOB_SUCCEEDED:
                cand.state, cand.evaluating_since = EVALUATING, now
            elif job.state == JOB_FAILED:
                cand.state, cand.note = FAILED, job.error[:2000]
                cand.measurement = measure(cand, job, None, None).to_json()
            elif job.state == JOB_CANCELLED:
                ours = job.cancelled_by == cancelled_by(comparison_id)
                cand.state = OUT_OF_BUDGET if ours else CANCELLED
                cand.note = job.cancel_reason or f"cancelled by {job.cancelled_by}"
                cand.measurement = measure(cand, job, None, None).to_json()
                cand.measurement["outcome"] = cand.state
            else:
                limit = float(cmp.budget.get("max_candidate_wall_s") or 0)
                started = as_utc(job.started_at)
                ran = (now - started).total_seconds() if started else 0.0
                reason = ""
                if over_total:
                    reason = "the comparison's total time budget is spent"
                elif limit and ran > limit:
                    reason = f"trained {ran:.0f}s, over the {limit:g}s budget per candidate"
                if reason and not job.cancel_requested:
                    emit = self.emit_for(session, cmp.correlation_id)
                    JobBook(session, emit).cancel(
                        job.job_id, tenant_scope=None, by=cancelled_by(comparison_id), reason=reason
                    )
                return
            cand.updated_at = now

    def _evaluating(self, comparison_id: str, position: int, over_total: bool) -> None:
        with Session(self.engine) as session:
            cmp = session.get(ComparisonRow, comparison_id)
            cand = session.get(CandidateRow, (comparison_id, position))
            tenant, name, job_id = cmp.tenant, cand.output_name, cand.job_id
            version_id, since = cand.model_version_id, as_utc(cand.evaluating_since)
        report, problem = None, ""
        try:
            if not version_id:
                version = self.versions.version_for_job(name, job_id, tenant)
                version_id = version.id if version is not None else ""
            report = self.reports.report_for(version_id, tenant) if version_id else None
        except Exception as exc:  # noqa: BLE001 - asked again next pass, until the timeout
            problem = f"; last lookup error: {exc}"
            log.warning("comparison %s candidate %s: %s", comparison_id, position, exc)
        waited = (utcnow() - since).total_seconds() if since else 0.0
        timed_out = waited > self.options.evaluation_timeout_s or over_total
        with session_scope(self.engine) as session:
            cand = session.get(CandidateRow, (comparison_id, position))
            if cand.state != EVALUATING:
                return
            cand.model_version_id = version_id
            cand.updated_at = utcnow()
            if report is None and not timed_out:
                return
            job = session.get(TrainingJobRow, job_id)
            cand.measurement = measure(cand, job, report, self.store).to_json()
            cand.state = MEASURED
            if report is not None:
                cand.evaluation_report_id = report.id
                cand.gate_verdict = cand.measurement["gate_verdict"]
            else:
                cand.note = (
                    f"not evaluated: no report {waited:.0f}s after training"
                    + (" (the total budget is spent)" if over_total else "")
                    + ("" if version_id else "; the registry has no version of it")
                    + problem
                )
            if cand.measurement.get("error"):
                cand.note = (cand.note + "; " + cand.measurement["error"]).strip("; ")

    def _complete_if_done(self, comparison_id: str) -> bool:
        with Session(self.engine) as session:
            book = ComparisonBook(session)
            cmp = book.get(comparison_id, tenant_scope=None)
            candidates = book.candidates(comparison_id)
            if cmp.state != RUNNING or any(c.state not in ENDED for c in candidates):
                return False
            report = comparison_report(cmp, candidates)
        ref = self.store.publish_files(
            {
                JSON_NAME: json.dumps(report, indent=2, sort_keys=True).encode(),
                HTML_NAME: render_html(report).encode(),
            },
            f"comparisons/{cmp.tenant}/{comparison_id}/report",
            metadata={"kind": "comparison-report", "comparison_id": comparison_id},
        )
        with session_scope(self.engine) as session:
            done = session.execute(
                sa.update(ComparisonRow)
                .where(ComparisonRow.id == comparison_id, ComparisonRow.state == RUNNING)
                .values(
                    state=COMPLETED,
                    recommendation=report["recommendation"],
                    report={
                        "uri": ref.uri,
                        "sha256": ref.sha256,
                        "size_bytes": ref.size_bytes,
                        "media_type": ref.media_type,
                    },
                    finished_at=utcnow(),
                    updated_at=utcnow(),
                )
                .execution_options(synchronize_session=False)
            )
        if done.rowcount == 1:
            log.info("comparison %s completed: report %s", comparison_id, ref.uri)
        return done.rowcount == 1


def decision_context(cmp: ComparisonRow) -> DecisionContext:
    return DecisionContext(
        data_rows=cmp.dataset_rows,
        tenants=max(1, int(cmp.serving.get("tenants") or 1)),
        fast_rollback=bool(cmp.serving.get("fast_rollback")),
        latency_budget_ms=float(cmp.serving.get("latency_budget_ms") or 0),
        budget_candidate_wall_s=float(cmp.budget.get("max_candidate_wall_s") or 0),
        budget_max_steps=int(cmp.budget.get("max_steps") or 0),
    )


def comparison_report(cmp: ComparisonRow, candidates: Sequence[CandidateRow]) -> dict[str, Any]:
    """The report of a comparison whose candidates have all ended: a function of the
    rows only (no clock), so building it again gives the same bytes."""
    header = {
        "id": cmp.id,
        "name": cmp.name,
        "tenant": cmp.tenant,
        "base_model": cmp.base_model,
        "dataset": cmp.dataset,
        "dataset_version": cmp.dataset_version,
        "budget": cmp.budget,
        "serving": cmp.serving,
        "created_by": cmp.created_by,
        "created_at": as_utc(cmp.created_at).isoformat(timespec="seconds"),
        "jobs": {c.name: c.job_id for c in candidates},
        "notes": {c.name: c.note for c in candidates if c.note},
    }
    measurements = [
        CandidateMeasurement.from_json(c.measurement)
        if c.measurement
        else CandidateMeasurement(c.name, c.method, outcome=c.state, error=c.note)
        for c in candidates
    ]
    rules = load_rules(cmp.rules_yaml, source=cmp.rules_source)
    return build_report(header, measurements, decision_context(cmp), rules)


# ------------------------------------------------------------------ measuring one candidate


def measure(
    cand: CandidateRow,
    job: TrainingJobRow,
    report: evaluation_pb2.EvaluationReport | None,
    store: ArtifactStore | None,
) -> CandidateMeasurement:
    """What is known of a candidate: its job's metrics, its training report and artifact
    (from the store), and its evaluation report."""
    metrics = job.metrics or {}

    def number(key: str) -> float | None:
        value = metrics.get(key)
        return None if value is None else float(value)

    m = CandidateMeasurement(
        name=cand.name,
        method=cand.method,
        method_config=dict(cand.method_config),
        outcome=MEASURED if job.state == JOB_SUCCEEDED else FAILED,
        error=job.error[:2000] if job.state == JOB_FAILED else "",
        job_id=job.job_id,
        model_version_id=cand.model_version_id,
        steps=int(job.step or 0),
        wall_time_s=number("wall_time_s"),
        train_tokens=None if number("train_tokens") is None else int(metrics["train_tokens"]),
        trainable_params=(
            None if number("trainable_params") is None else int(metrics["trainable_params"])
        ),
        first_loss=number("first_loss"),
        final_loss=number("final_loss"),
    )
    refs = artifact_refs(job)
    if store is not None and job.state == JOB_SUCCEEDED and refs:
        try:
            _read_artifacts(m, store, refs)
        except Exception as exc:  # noqa: BLE001 - measured without them, and said so
            m.error = f"training report unreadable: {exc}"
    if report is not None:
        _read_evaluation(m, report)
    return m


def _read_artifacts(m: CandidateMeasurement, store: ArtifactStore, refs: list[ArtifactRef]) -> None:
    primary = store.get_manifest(refs[0])
    m.artifact_bytes = primary.total_size_bytes
    m.artifact_kind = primary.metadata.get("kind", "")
    report = store.get_manifest(refs[-1])
    entry = next((e for e in report.files if e.path == "training_report.json"), None)
    if entry is None:
        return
    training = json.loads(store.get_bytes(store.file_ref(entry)))
    params = training.get("params") or {}
    m.total_params = params.get("total")
    m.trainable_params = params.get("trainable", m.trainable_params)
    peak = training.get("peak_memory") or {}
    m.peak_memory_bytes = peak.get("bytes")
    m.peak_memory_kind = peak.get("kind", "")
    if m.wall_time_s is None and training.get("wall_time_s") is not None:
        m.wall_time_s = float(training["wall_time_s"])


def _read_evaluation(m: CandidateMeasurement, report: evaluation_pb2.EvaluationReport) -> None:
    overall = {v.name: v.value for v in report.metrics if not v.tag}
    m.evaluation_report_id = report.id
    m.model_version_id = m.model_version_id or report.model_version_id
    m.suite = f"{report.suite}@{report.suite_version[:12]}"
    m.quality = overall
    m.judge_score = overall.get("judge_score")
    m.latency_p50_s = overall.get("latency_p50_s")
    m.latency_p95_s = overall.get("latency_p95_s")
    m.serving = {
        s.mode: {
            "latency_p50_s": s.latency_p50_s,
            "latency_p95_s": s.latency_p95_s,
            "completion_tokens_per_s": s.completion_tokens_per_s,
            "requests": float(s.requests),
        }
        for s in report.serving
    }
    verdict = common_pb2.GateVerdict.Name(report.verdict).removeprefix("GATE_VERDICT_")
    m.gate_verdict = "" if verdict == "UNSPECIFIED" else verdict
    m.gate_reasons = list(report.reasons)[:20]
