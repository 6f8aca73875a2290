"""The ComparisonService gRPC servicer (served by the trainer, which owns the jobs) and
the comparison collector beside it: a thin shell over posttrain.comparison.

| RPC                                                   | role      |
|-------------------------------------------------------|-----------|
| CreateComparison                                      | trainer   |
| GetComparison, ListComparisons, GetComparisonReport   | any role  |

CreateComparison refuses, before anything is recorded, every bad argument at once, each
named where it is (`candidates[2].method_config.rank`, `budget.max_steps`,
`rules_yaml.method_rules[0].when[1].op`), and asks intake and the registry with the
caller's own key, like SubmitJob. Then one transaction records the comparison and
submits one ordinary training job per candidate (output name
`<name>-cmp-<id8>-<candidate>`). Tenants: a caller sees only its own tenant's
comparisons; admin sees all.

The collector reads the registry and the evaluator with the trainer's own key
(POSTTRAIN_REGISTRY_API_KEY; POSTTRAIN_EVALUATOR_API_KEY if the evaluator needs another).
"""

from __future__ import annotations

import re

import grpc
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from posttrain.comparison import RuleError, default_rules, load_rules
from posttrain.comparison.rules import DEFAULT_RULES_PATH
from posttrain.comparison.runs import (
    COMPLETED,
    CandidatePlan,
    CollectorOptions,
    ComparisonBook,
    ComparisonCollector,
    ComparisonPlan,
    candidate_output_name,
    new_comparison_id,
)
from posttrain.comparison.tables import COMPARISON_MIGRATIONS, CandidateRow, ComparisonRow
from posttrain.db import apply_migrations, session_scope
from posttrain.events import outbox_emitter
from posttrain.intake import check_name, check_version_id
from posttrain.registry import names
from posttrain.rpc import (
    ROLES,
    FailedPrecondition,
    InvalidArgument,
    Role,
    current_correlation_id,
    current_principal,
    make_channel,
    require_role,
)
from posttrain.rpc.errors import FieldViolation
from posttrain.rpc.paging import page_bounds, page_response
from posttrain.rpc.server import AddServicerFn
from posttrain.storage import ArtifactRef, ArtifactStore
from posttrain.trainer import METHOD_TO_PROTO, PROTO_TO_METHOD, JobRequest, build_job_config
from posttrain.v1 import (
    common_pb2,
    comparison_pb2,
    comparison_pb2_grpc,
    evaluation_pb2,
    evaluation_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from services.trainer.lookups import (
    BaseModelLookup,
    DatasetLookup,
    forwarded_credentials,
    training_inputs,
)
from services.trainer.settings import TrainerSettings

SERVICE_NAME = comparison_pb2.DESCRIPTOR.services_by_name["ComparisonService"].full_name
READ_ROLES = tuple(sorted(ROLES))
CANDIDATE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,23}")
MAX_CANDIDATES = 16

STATE_TO_PROTO = {
    "RUNNING": comparison_pb2.COMPARISON_STATE_RUNNING,
    "COMPLETED": comparison_pb2.COMPARISON_STATE_COMPLETED,
}
CANDIDATE_TO_PROTO = {
    "TRAINING": comparison_pb2.CANDIDATE_STATE_TRAINING,
    "EVALUATING": comparison_pb2.CANDIDATE_STATE_EVALUATING,
    "MEASURED": comparison_pb2.CANDIDATE_STATE_MEASURED,
    "FAILED": comparison_pb2.CANDIDATE_STATE_FAILED,
    "CANCELLED": comparison_pb2.CANDIDATE_STATE_CANCELLED,
    "OUT_OF_BUDGET": comparison_pb2.CANDIDATE_STATE_OUT_OF_BUDGET,
}
VERDICT_TO_PROTO = {"PASS": common_pb2.GATE_VERDICT_PASS, "FAIL": common_pb2.GATE_VERDICT_FAIL}


# ------------------------------------------------------------------ lookups


class GrpcModelVersionLookup:
    def __init__(self, target: str, api_key: str, *, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self._stub = registry_pb2_grpc.RegistryServiceStub(
            make_channel(target, api_key=api_key or None)
        )

    def version_for_job(self, name: str, job_id: str, tenant: str):
        try:
            response = self._stub.ListModelVersions(
                registry_pb2.ListModelVersionsRequest(name=name, tenant=tenant),
                timeout=self.timeout_s,
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return next((v for v in response.versions if v.lineage.training_job_id == job_id), None)


class GrpcReportLookup:
    def __init__(self, target: str, api_key: str, *, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self._stub = evaluation_pb2_grpc.EvaluationServiceStub(
            make_channel(target, api_key=api_key or None)
        )

    def report_for(self, model_version_id: str, tenant: str):
        """The version's first report (the one model.registered triggered)."""
        try:
            reports = self._stub.ListReports(
                evaluation_pb2.ListReportsRequest(model_version_id=model_version_id),
                timeout=self.timeout_s,
            ).reports
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return min(reports, key=lambda r: r.created_at.ToDatetime()) if reports else None


def outbox_emit(session: Session, correlation_id: str):
    """The collector's and CreateComparison's emit: the trainer's outbox."""
    return outbox_emitter(session, producer="trainer", correlation_id=correlation_id)


# ------------------------------------------------------------------ the servicer


class ComparisonServicer(comparison_pb2_grpc.ComparisonServiceServicer):
    def __init__(
        self,
        settings: TrainerSettings,
        engine: Engine,
        store: ArtifactStore,
        datasets: DatasetLookup,
        base_models: BaseModelLookup,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.store = store
        self.datasets = datasets
        self.base_models = base_models

    def CreateComparison(self, request, context):
        caller = require_role(current_principal(), Role.TRAINER)
        names.check(names.MODEL_NAME, request.name, "name", "model name")
        names.check(names.BASE_MODEL_NAME, request.base_model, "base_model", "base model name")
        check_name(request.dataset, "dataset")
        check_version_id(request.dataset_version, "dataset_version")
        comparison_id = new_comparison_id()
        violations: list[FieldViolation] = []
        budget = _budget(request.budget, violations)
        serving = _serving(request.serving, violations)
        rules_yaml, rules_source = _rules(request.rules_yaml, violations)
        specs = self._candidates(request, comparison_id, budget, violations)
        if violations:
            raise InvalidArgument(violations=violations)

        version, weights, manifest = training_inputs(
            self.datasets,
            self.base_models,
            dataset=request.dataset,
            dataset_version=request.dataset_version,
            base_model=request.base_model,
            credentials=forwarded_credentials(context),
        )

        candidates = [
            CandidatePlan(
                name=spec.name,
                method=method,
                method_config=dict(spec.method_config),
                hyperparameters=dict(spec.hyperparameters),
                job=JobRequest(
                    tenant=caller.tenant,
                    base_model=request.base_model,
                    base_weights=weights,
                    dataset=request.dataset,
                    dataset_version=request.dataset_version,
                    dataset_manifest=manifest,
                    method=method,
                    config_yaml=config_yaml,
                    output_name=candidate_output_name(request.name, comparison_id, spec.name),
                    submitted_by=caller.name,
                ),
            )
            for spec, method, config_yaml in specs
        ]
        plan = ComparisonPlan(
            id=comparison_id,
            tenant=caller.tenant,
            name=request.name,
            base_model=request.base_model,
            dataset=request.dataset,
            dataset_version=request.dataset_version,
            dataset_rows=int(version.train_rows or version.rows),
            budget=budget,
            serving=serving,
            rules_yaml=rules_yaml,
            rules_source=rules_source,
            created_by=caller.name,
            correlation_id=current_correlation_id() or "",
            candidates=candidates,
        )
        with session_scope(self.engine) as session:
            book = ComparisonBook(session, outbox_emit(session, plan.correlation_id))
            row = book.create(plan)
            return comparison_proto(row, book.candidates(row.id))

    def _candidates(self, request, comparison_id, budget, violations):
        """(spec, method, config YAML) per candidate; problems added to `violations`."""
        if not request.candidates:
            violations.append(FieldViolation("candidates", "at least one candidate is required"))
        if len(request.candidates) > MAX_CANDIDATES:
            violations.append(
                FieldViolation("candidates", f"at most {MAX_CANDIDATES} candidates per comparison")
            )
        found, seen = [], set()
        for i, spec in enumerate(request.candidates):
            at = f"candidates[{i}]"
            if not CANDIDATE_NAME.fullmatch(spec.name):
                violations.append(
                    FieldViolation(
                        f"{at}.name", f"{spec.name!r} must match [a-z0-9][a-z0-9-]{{0,23}}"
                    )
                )
            elif spec.name in seen:
                violations.append(FieldViolation(f"{at}.name", f"{spec.name!r} is used twice"))
            else:
                output = candidate_output_name(request.name, comparison_id, spec.name)
                if not names.MODEL_NAME.fullmatch(output):
                    violations.append(
                        FieldViolation(f"{at}.name", f"makes the model name {output!r} too long")
                    )
            seen.add(spec.name)
            method = PROTO_TO_METHOD.get(spec.method, "")
            if not method:
                violations.append(FieldViolation(f"{at}.method", "a tuning method is required"))
                continue
            hyperparameters = dict(spec.hyperparameters)
            if "max_steps" in hyperparameters and budget["max_steps"]:
                try:
                    asked = int(hyperparameters["max_steps"])
                except ValueError:
                    asked = 0  # build_job_config names it
                if asked > budget["max_steps"]:
                    violations.append(
                        FieldViolation(
                            f"{at}.hyperparameters.max_steps",
                            f"{asked} is over the budget's max_steps {budget['max_steps']}",
                        )
                    )
                    continue
            elif budget["max_steps"]:
                hyperparameters["max_steps"] = str(budget["max_steps"])
            hyperparameters |= {f"method_config.{k}": v for k, v in spec.method_config.items()}
            try:
                config = build_job_config(
                    method,
                    hyperparameters,
                    defaults={"checkpoint_every": self.settings.default_checkpoint_every},
                )
            except InvalidArgument as exc:
                violations += [
                    FieldViolation(_candidate_field(at, v.field), v.message) for v in exc.violations
                ]
                continue
            found.append((spec, method, config.to_yaml()))
        return found

    def GetComparison(self, request, context):
        caller = require_role(current_principal(), *READ_ROLES)
        with Session(self.engine) as session:
            book = ComparisonBook(session)
            row = book.get(_comparison_id(request.id), tenant_scope=caller.tenant_scope())
            return comparison_proto(row, book.candidates(row.id))

    def ListComparisons(self, request, context):
        caller = require_role(current_principal(), *READ_ROLES)
        offset, limit = page_bounds(request.page)
        with Session(self.engine) as session:
            book = ComparisonBook(session)
            rows, total = book.list(tenant_scope=caller.tenant_scope(), offset=offset, limit=limit)
            return comparison_pb2.ListComparisonsResponse(
                comparisons=[comparison_proto(r, book.candidates(r.id)) for r in rows],
                page=page_response(offset, len(rows), total),
            )

    def GetComparisonReport(self, request, context):
        caller = require_role(current_principal(), *READ_ROLES)
        with Session(self.engine) as session:
            row = ComparisonBook(session).get(
                _comparison_id(request.id), tenant_scope=caller.tenant_scope()
            )
        if row.state != COMPLETED:
            raise FailedPrecondition(
                f"comparison {row.id} is {row.state}: its report is written when every "
                f"candidate has ended"
            )
        ref = ArtifactRef(**row.report)
        manifest = self.store.get_manifest(ref)
        files = {e.path: self.store.get_bytes(self.store.file_ref(e)) for e in manifest.files}
        return comparison_pb2.ComparisonReport(
            comparison_id=row.id,
            report_json=files.get("comparison_report.json", b"").decode(),
            html=files.get("comparison_report.html", b""),
            report=ref.to_proto(),
        )


# ------------------------------------------------------------------ conversions and checks


def comparison_proto(
    row: ComparisonRow, candidates: list[CandidateRow]
) -> comparison_pb2.Comparison:
    rec = row.recommendation or {}
    msg = comparison_pb2.Comparison(
        id=row.id,
        name=row.name,
        state=STATE_TO_PROTO[row.state],
        base_model=row.base_model,
        dataset=row.dataset,
        dataset_version=row.dataset_version,
        candidates=[_candidate_proto(c) for c in candidates],
        budget=comparison_pb2.ComparisonBudget(
            max_steps=int(row.budget.get("max_steps") or 0),
            max_candidate_wall_s=float(row.budget.get("max_candidate_wall_s") or 0),
            max_total_wall_s=float(row.budget.get("max_total_wall_s") or 0),
        ),
        serving=comparison_pb2.ServingContext(
            tenants=int(row.serving.get("tenants") or 0),
            fast_rollback=bool(row.serving.get("fast_rollback")),
            latency_budget_ms=float(row.serving.get("latency_budget_ms") or 0),
        ),
        tenant=row.tenant,
        created_by=row.created_by,
        recommended_candidate=rec.get("candidate") or "",
        recommended_serving=rec.get("serving") or "",
        recommendation=rec.get("summary") or "",
    )
    if row.report:
        msg.report.CopyFrom(ArtifactRef(**row.report).to_proto())
    msg.created_at.FromDatetime(row.created_at)
    if row.finished_at is not None:
        msg.finished_at.FromDatetime(row.finished_at)
    return msg


def _candidate_proto(c: CandidateRow) -> comparison_pb2.Candidate:
    return comparison_pb2.Candidate(
        spec=comparison_pb2.CandidateSpec(
            name=c.name,
            method=METHOD_TO_PROTO[c.method],
            method_config=c.method_config,
            hyperparameters=c.hyperparameters,
        ),
        state=CANDIDATE_TO_PROTO[c.state],
        job_id=c.job_id,
        output_name=c.output_name,
        model_version_id=c.model_version_id,
        evaluation_report_id=c.evaluation_report_id,
        gate_verdict=VERDICT_TO_PROTO.get(c.gate_verdict, common_pb2.GATE_VERDICT_UNSPECIFIED),
        note=c.note,
    )


def _candidate_field(at: str, field: str) -> str:
    """build_job_config's field names, as the candidate's: hyperparameters.method_config.rank
    -> candidates[i].method_config.rank, hyperparameters.lr -> candidates[i].hyperparameters.lr."""
    if field.startswith("hyperparameters.method_config."):
        return f"{at}.{field.removeprefix('hyperparameters.')}"
    return f"{at}.{field}"


def _budget(budget, violations: list[FieldViolation]) -> dict:
    values = {
        "max_steps": int(budget.max_steps),
        "max_candidate_wall_s": float(budget.max_candidate_wall_s),
        "max_total_wall_s": float(budget.max_total_wall_s),
    }
    for key, value in values.items():
        if value < 0:
            violations.append(
                FieldViolation(f"budget.{key}", f"{value} must be >= 0 (0 = no limit)")
            )
    return values


def _serving(serving, violations: list[FieldViolation]) -> dict:
    if serving.tenants < 0:
        violations.append(FieldViolation("serving.tenants", "must be >= 0"))
    if serving.latency_budget_ms < 0:
        violations.append(FieldViolation("serving.latency_budget_ms", "must be >= 0"))
    return {
        "tenants": max(1, serving.tenants),
        "fast_rollback": serving.fast_rollback,
        "latency_budget_ms": serving.latency_budget_ms,
    }


def _rules(text: str, violations: list[FieldViolation]) -> tuple[str, str]:
    """The rules YAML the comparison will use (stored whole) and where it came from."""
    if not text.strip():
        default_rules()  # the shipped file must load; it is tested
        return DEFAULT_RULES_PATH.read_text(), DEFAULT_RULES_PATH.name
    try:
        load_rules(text)
    except RuleError as exc:
        violations += [
            FieldViolation(f"rules_yaml.{v.field}" if v.field else "rules_yaml", v.message)
            for v in exc.violations
        ]
    return text, "rules_yaml of the request"


def _comparison_id(value: str) -> str:
    if not value:
        raise InvalidArgument("id", "is required")
    if len(value) > 32 or not value.isalnum():
        raise InvalidArgument("id", f"{value[:40]!r} is not a comparison id")
    return value


# ------------------------------------------------------------------ wiring


def migrate(engine: Engine) -> None:
    apply_migrations(engine, "comparison", COMPARISON_MIGRATIONS)


def servicer_entry(
    settings: TrainerSettings,
    engine: Engine,
    datasets: DatasetLookup,
    base_models: BaseModelLookup,
) -> tuple[AddServicerFn, object]:
    migrate(engine)
    servicer = ComparisonServicer(
        settings, engine, ArtifactStore.from_settings(settings.s3), datasets, base_models
    )
    return (comparison_pb2_grpc.add_ComparisonServiceServicer_to_server, servicer)


def collector(settings: TrainerSettings, engine: Engine) -> ComparisonCollector:
    migrate(engine)
    return ComparisonCollector(
        engine=engine,
        store=ArtifactStore.from_settings(settings.s3),
        versions=GrpcModelVersionLookup(
            settings.registry_target,
            settings.registry_api_key,
            timeout_s=settings.upstream_timeout_s,
        ),
        reports=GrpcReportLookup(
            settings.evaluator_target,
            settings.evaluator_api_key or settings.registry_api_key,
            timeout_s=settings.upstream_timeout_s,
        ),
        emit_for=outbox_emit,
        options=CollectorOptions(
            poll_s=settings.comparison_poll_s,
            evaluation_timeout_s=settings.comparison_evaluation_timeout_s,
        ),
    )
