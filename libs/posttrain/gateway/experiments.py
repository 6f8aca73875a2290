"""A/B experiments on one route of one tenant: creation (every variant must be servable
now), sticky assignment, the guardrail after feedback, stopping, and the report.

- A variant names a model version with a live deployment on any stage of the tenant's use
  case (promote it to staging or production first: the registry's two deployed stages
  give two arms), or "base:<base model>" for the base model itself, served by the
  multi-adapter LLM model of a live adapter deployment of that use case (empty lora_name):
  the "base vs tuned" comparison. Each variant's Triton target is fixed at creation, so
  a later promotion or rollback of the route does not change what an arm serves.
- One running experiment per (tenant, route). While it runs, every request on the route
  is assigned by posttrain.experiments.assign_variant(experiment id, user key, variants,
  stopped arms): sticky per user key, share-weighted; a stopped arm's users are re-hashed
  among the others, everyone else keeps their arm.
- After each feedback on an experiment with a max policy-incident rate, the guardrail
  (posttrain.experiments.check_guardrail) may stop arms; when every arm is stopped the
  experiment stops.
- The report is built from the stored inference records (build_report), with the
  experiment judge's scores where one graded them (ExperimentGrader; the report does not
  wait for grades still queued), and written as report.json / .html / .png, uploaded as a
  folder artifact; the uris name its files.
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from posttrain.db import session_scope, utcnow
from posttrain.experiments import (
    AnalysisConfig,
    ArmStop,
    InferenceRecord,
    assign_variant,
    build_report,
    check_guardrail,
    validate_variants,
    write_report,
)
from posttrain.experiments.stats import proportion, summarize
from posttrain.gateway import metrics, names
from posttrain.gateway.records import InferenceLog
from posttrain.gateway.routes import Target, live_deployment
from posttrain.gateway.tables import BaseModelRow, DeploymentRow, ExperimentRow, InferenceRow
from posttrain.rpc.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from posttrain.storage import ArtifactStore
from posttrain.v1 import gateway_pb2

log = logging.getLogger(__name__)

MAX_VARIANTS = 10


@dataclass(frozen=True)
class VariantSpec:
    name: str
    model_version_id: str
    share: float


@dataclass(frozen=True)
class Arm:
    name: str
    share: float
    target: Target


@dataclass(frozen=True)
class RunningExperiment:
    """What the request path needs of a running experiment."""

    id: str
    arms: tuple[Arm, ...]
    stopped: frozenset[str]

    def assign(self, user_key: str) -> Arm:
        name = assign_variant(
            self.id, user_key, [(a.name, a.share) for a in self.arms], stopped=self.stopped
        )
        return next(a for a in self.arms if a.name == name)

    @classmethod
    def of_row(cls, row: ExperimentRow) -> RunningExperiment:
        arms = tuple(
            Arm(
                v["name"],
                float(v["share"]),
                Target(
                    v.get("deployment_id", ""),
                    v["model_version_id"],
                    v["triton_model"],
                    v.get("lora_name", ""),
                    v.get("stream_model", ""),
                ),
            )
            for v in row.variants
        )
        return cls(row.id, arms, frozenset(stopped_names(row)))


def stopped_names(row: ExperimentRow) -> list[str]:
    return [s["variant"] for s in row.stopped_arms or []]


def experiment_proto(row: ExperimentRow) -> gateway_pb2.Experiment:
    message = gateway_pb2.Experiment(
        id=row.id,
        use_case=row.use_case,
        variants=[
            gateway_pb2.Variant(
                name=v["name"], model_version_id=v["model_version_id"], share=v["share"]
            )
            for v in row.variants
        ],
        running=row.running,
        max_policy_incident_rate=row.max_policy_incident_rate,
        stopped_arms=stopped_names(row),
    )
    message.started_at.FromDatetime(row.started_at)
    return message


def running_experiment(session: Session, tenant: str, route: str) -> ExperimentRow | None:
    return session.scalar(
        sa.select(ExperimentRow).where(
            ExperimentRow.tenant == tenant,
            ExperimentRow.use_case == route,
            ExperimentRow.running.is_(True),
        )
    )


def list_experiments(
    session: Session,
    tenant: str,
    *,
    use_case: str = "",
    running_only: bool = False,
    offset: int = 0,
    limit: int = 100,
) -> tuple[list[ExperimentRow], int]:
    """A page of a tenant's experiments, newest first, and how many there are in all."""
    where = [ExperimentRow.tenant == tenant]
    if use_case:
        where.append(ExperimentRow.use_case == use_case)
    if running_only:
        where.append(ExperimentRow.running.is_(True))
    total = session.scalar(sa.select(sa.func.count()).select_from(ExperimentRow).where(*where))
    rows = session.scalars(
        sa.select(ExperimentRow)
        .where(*where)
        .order_by(ExperimentRow.started_at.desc(), ExperimentRow.id)
        .offset(offset)
        .limit(limit)
    )
    return list(rows), int(total or 0)


class ExperimentBook:
    """Experiments in the gateway's database; `on_change` runs after anything that changes
    what a request is routed to (the gateway drops its route cache)."""

    def __init__(
        self,
        engine: Engine,
        store: ArtifactStore | None,
        *,
        analysis: AnalysisConfig | None = None,
        guardrail_min_requests: int = 100,
        records: InferenceLog | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.analysis = analysis or AnalysisConfig()
        self.guardrail_min_requests = guardrail_min_requests
        self.records = records
        self.on_change = on_change or (lambda: None)

    # ------------------------------------------------------------------ lifecycle

    def create(
        self,
        *,
        tenant: str,
        route: str,
        variants: Sequence[VariantSpec],
        max_policy_incident_rate: float,
        actor: str,
    ) -> ExperimentRow:
        use_case, stage = names.parse_use_case(route)
        route = names.route_name(use_case, stage)
        self._check(variants, max_policy_incident_rate)
        with session_scope(self.engine) as session:
            current = running_experiment(session, tenant, route)
            if current is not None:
                raise FailedPrecondition(
                    f"experiment {current.id} already runs on {route!r}; stop it first"
                )
            arms = [self._resolve(session, tenant, use_case, i, v) for i, v in enumerate(variants)]
            row = ExperimentRow(
                id=f"exp-{uuid.uuid4().hex[:12]}",
                tenant=tenant,
                use_case=route,
                variants=[
                    {"name": v.name, "share": v.share, **arm.as_dict()}
                    for v, arm in zip(variants, arms, strict=True)
                ],
                running=True,
                max_policy_incident_rate=max_policy_incident_rate,
                stopped_arms=[],
                created_by=actor,
                started_at=utcnow(),
                stopped_at=None,
                stopped_by="",
                stop_reason="",
            )
            session.add(row)
        log.info("experiment %s started on %s/%s by %s", row.id, tenant, route, actor)
        self.on_change()
        return row

    def _check(self, variants: Sequence[VariantSpec], max_rate: float) -> None:
        problems = []
        if len(variants) > MAX_VARIANTS:
            problems.append(FieldViolation("variants", f"at most {MAX_VARIANTS} variants"))
        try:
            validate_variants([(v.name, v.share) for v in variants])
        except ValueError as exc:
            problems.append(FieldViolation("variants", str(exc)))
        for i, v in enumerate(variants):
            if len(v.name) > 100:
                problems.append(FieldViolation(f"variants[{i}].name", "is over 100 characters"))
            if not v.model_version_id:
                problems.append(
                    FieldViolation(
                        f"variants[{i}].model_version_id",
                        "a model version id, or 'base:<base model>' for the base model",
                    )
                )
        if not (math.isfinite(max_rate) and 0.0 <= max_rate < 1.0):
            problems.append(
                FieldViolation("max_policy_incident_rate", "must lie in [0, 1); 0 = no guardrail")
            )
        if problems:
            raise InvalidArgument(violations=problems)

    def _resolve(
        self, session: Session, tenant: str, use_case: str, i: int, variant: VariantSpec
    ) -> Target:
        field = f"variants[{i}].model_version_id"
        base = names.base_variant_model(variant.model_version_id)
        if base is None:
            deployment = live_deployment(session, tenant, use_case, variant.model_version_id)
            if deployment is None:
                raise FailedPrecondition(
                    f"{field}: {variant.model_version_id!r} has no live deployment for use case "
                    f"{use_case!r}; promote it to staging or production first"
                )
            return Target(
                deployment.id,
                deployment.model_version_id,
                deployment.triton_model,
                deployment.lora_name,
                deployment.stream_model,
            )
        # The base must be the base of a live adapter deployment of this use case: it is
        # loaded then, and the tenant compares its own tuned model with where it started.
        served = session.scalars(
            sa.select(DeploymentRow.triton_model).where(
                DeploymentRow.tenant == tenant,
                DeploymentRow.use_case == use_case,
                DeploymentRow.base_model == base,
                DeploymentRow.kind == "adapter",
                DeploymentRow.status == "live",
            )
        ).all()
        row = session.scalar(
            sa.select(BaseModelRow)
            .where(BaseModelRow.name == base, BaseModelRow.triton_model.in_(served))
            .order_by(BaseModelRow.created_at.desc())
        )
        if row is None:
            raise FailedPrecondition(
                f"{field}: base model {base!r} serves no live adapter deployment of use case "
                f"{use_case!r}; deploy an adapter on it first"
            )
        return Target("", variant.model_version_id, row.triton_model, "", row.stream_model)

    def stop(
        self, *, tenant: str, experiment_id: str, actor: str, reason: str = "stopped by hand"
    ) -> ExperimentRow:
        """Stop serving the experiment (its route serves its deployment again). Stopping a
        stopped experiment returns it unchanged."""
        with session_scope(self.engine) as session:
            row = self.get(session, tenant, experiment_id)
            if row.running:
                row.running = False
                row.stopped_at = utcnow()
                row.stopped_by = actor
                row.stop_reason = reason
        self.on_change()
        return row

    @staticmethod
    def get(session: Session, tenant: str, experiment_id: str) -> ExperimentRow:
        row = session.get(ExperimentRow, experiment_id) if experiment_id else None
        if row is None or row.tenant != tenant:  # another tenant's: as if it did not exist
            raise NotFound("experiment", experiment_id)
        return row

    # ------------------------------------------------------------------ guardrail

    def after_feedback(self, experiment_id: str) -> list[ArmStop]:
        """Apply the guardrail to a running experiment; returns the arms it stopped now."""
        alpha = self.analysis.alpha
        with session_scope(self.engine) as session:
            row = session.scalar(
                sa.select(ExperimentRow).where(ExperimentRow.id == experiment_id).with_for_update()
            )
            if row is None or not row.running or row.max_policy_incident_rate <= 0:
                return []
            flagged = sa.case((InferenceRow.policy_incident.is_(True), 1), else_=0)
            counts = session.execute(
                sa.select(
                    InferenceRow.variant,
                    sa.func.count(InferenceRow.policy_incident),
                    sa.func.sum(flagged),
                )
                .where(
                    InferenceRow.experiment_id == experiment_id,
                    InferenceRow.policy_incident.is_not(None),
                )
                .group_by(InferenceRow.variant)
            ).all()
            arms = [v["name"] for v in row.variants]
            stats = summarize([], arms, alpha=alpha)
            for variant, reviewed, incidents in counts:
                if variant in stats:
                    stats[variant] = replace(
                        stats[variant],
                        policy_incident=proportion(int(incidents or 0), int(reviewed), alpha),
                    )
            already = stopped_names(row)
            stops = check_guardrail(
                stats,
                row.max_policy_incident_rate,
                self.guardrail_min_requests,
                alpha=alpha,
                already_stopped=already,
            )
            if not stops:
                return []
            now = utcnow().isoformat()
            row.stopped_arms = [
                *(row.stopped_arms or []),
                *({"variant": s.variant, "reason": s.reason, "at": now} for s in stops),
            ]
            if len(already) + len(stops) >= len(arms):
                row.running = False
                row.stopped_at = utcnow()
                row.stopped_by = "guardrail"
                row.stop_reason = "every arm crossed the policy-incident guardrail"
        for stop in stops:
            log.warning("experiment %s: guardrail stopped arm %s", experiment_id, stop.reason)
            metrics.ARMS_STOPPED.inc()
        self.on_change()
        return stops

    # ------------------------------------------------------------------ report

    def report(self, *, tenant: str, experiment_id: str) -> gateway_pb2.ExperimentReport:
        if self.records is not None:
            self.records.flush()  # every request served so far counts
        with Session(self.engine) as session:
            row = self.get(session, tenant, experiment_id)
            experiment = experiment_proto(row)
            variants = [(v["name"], float(v["share"])) for v in row.variants]
            stopped = stopped_names(row)
            max_rate = row.max_policy_incident_rate or None
            rows = session.scalars(
                sa.select(InferenceRow).where(InferenceRow.experiment_id == experiment_id)
            ).all()
            records = [
                InferenceRecord(
                    request_id=r.request_id,
                    variant=r.variant,
                    latency_ms=r.latency_ms,
                    prompt_tokens=r.prompt_tokens,
                    completion_tokens=r.completion_tokens,
                    cost=r.cost,
                    success=r.success,
                    policy_incident=r.policy_incident,
                    human_intervention=r.human_intervention,
                    rating=r.rating,
                    judge_score=r.judge_score,
                )
                for r in rows
            ]
            judges = sorted(
                {f"{r.judge_id}@{r.judge_version}" for r in rows if r.judge_score is not None}
            )
        report = build_report(
            experiment_id,
            variants,
            records,
            config=self.analysis,
            stopped=stopped,
            max_policy_incident_rate=max_rate,
            judges=judges,
        )
        html_uri, png_uri = self._publish(report, tenant, experiment_id)
        return report.to_proto(experiment, html_uri=html_uri, png_uri=png_uri)

    def _publish(self, report, tenant: str, experiment_id: str) -> tuple[str, str]:
        """Upload report.json/.html/.png as one folder artifact; ("", "") without a store.
        A store that fails is logged: the report itself is still answered."""
        if self.store is None:
            return "", ""
        try:
            with tempfile.TemporaryDirectory(prefix="experiment-report-") as tmp:
                files = write_report(report, Path(tmp))
                digest = hashlib.sha256(files.json.read_bytes()).hexdigest()[:16]
                ref = self.store.put_folder(
                    tmp,
                    f"experiments/{tenant}/{experiment_id}/report-{digest}",
                    metadata={"kind": "experiment-report", "experiment_id": experiment_id},
                    overwrite=True,
                )
            by_path = {e.path: e for e in self.store.get_manifest(ref).files}
            return (
                self.store.file_ref(by_path["report.html"]).uri,
                self.store.file_ref(by_path["report.png"]).uri,
            )
        except Exception:  # noqa: BLE001 - the numbers matter more than the files
            log.exception("uploading the report of experiment %s failed", experiment_id)
            return "", ""
