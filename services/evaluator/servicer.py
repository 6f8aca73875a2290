"""The EvaluationService gRPC servicer and the service's wiring: thin shells over
posttrain.evaluator.

Who may call what (admin holds every role):

| RPC                                               | role                 |
|---------------------------------------------------|----------------------|
| RunEvaluation                                     | operator or trainer  |
| UploadSuite                                       | operator             |
| SubmitReviewLabel                                 | rater                |
| GetReport, ListReports, ListReviewItems,          | any role             |
| ListSuites, GetJudgeCalibration, ExportAnchors    |                      |

Tenants: reports, review items and anchor sets belong to the model version's tenant; a
caller sees and labels only its own tenant's (another tenant's report or item is
NOT_FOUND); admin reads any tenant's. RunEvaluation looks the version up in the registry
with the caller's own key, so the registry's tenant rules hold for it too;
RunEvaluation("base:<name>") evaluates a registered base model itself, for the caller's
tenant (base models are shared: each tenant gets its own report of one). Suites are
shared by every tenant (like base models); uploading one is an operator's decision,
since its gate policy decides releases.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from posttrain.db import apply_migrations, session_scope, utcnow
from posttrain.evaluation import dump_anchors
from posttrain.evaluation.calibration import anchor_set_version
from posttrain.evaluator import (
    EVALUATOR_MIGRATIONS,
    TRIGGER_RPC,
    EvaluationRequest,
    Evaluator,
    ModelLoader,
    ModelUnderTest,
    SuiteCatalog,
    metrics,
    report_proto,
    reports,
    review,
)
from posttrain.evaluator.models import base_model_name
from posttrain.evaluator.suites import manifest_ref
from posttrain.evaluator.tables import SuiteRow
from posttrain.events import EVENTS_MIGRATIONS, EventRuntime, topics
from posttrain.registry import names
from posttrain.rpc import (
    ROLES,
    InvalidArgument,
    PermissionDenied,
    Role,
    current_correlation_id,
    current_principal,
    require_role,
)
from posttrain.rpc.paging import page_bounds, page_response
from posttrain.rpc.server import AddServicerFn
from posttrain.storage import ArtifactStore
from posttrain.storage.keys import check_segment
from posttrain.v1 import evaluation_pb2, evaluation_pb2_grpc
from services.evaluator.handlers import on_model_registered
from services.evaluator.lookups import GrpcRegistry, forwarded_credentials, own_credentials
from services.evaluator.settings import EvaluatorSettings

SERVICE_NAME = evaluation_pb2.DESCRIPTOR.services_by_name["EvaluationService"].full_name
READ_ROLES = tuple(sorted(ROLES))


class EvaluationServicer(evaluation_pb2_grpc.EvaluationServiceServicer):
    def __init__(
        self, settings: EvaluatorSettings, engine: Engine, evaluator: Evaluator, registry
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.evaluator = evaluator
        self.registry = registry  # has .bound(credentials) -> posttrain.evaluator.Registry

    # ------------------------------------------------------------------ evaluations

    def RunEvaluation(self, request, context):
        caller = require_role(current_principal(), Role.OPERATOR, Role.TRAINER)
        base_name = base_model_name(request.model_version_id)
        if base_name is None:
            names.check_version_id(request.model_version_id)
        elif not base_name:
            raise InvalidArgument("model_version_id", "name the base model: 'base:<name>'")
        if request.seed < 0:
            raise InvalidArgument("seed", "must be >= 0 (0 = the configured seed)")
        if request.use_case:
            names.check(names.USE_CASE, request.use_case, "use_case", "use case")
        if request.suite_version and not request.suite:
            raise InvalidArgument("suite", "name the suite whose suite_version you give")
        registry = self.registry.bound(forwarded_credentials(context))
        started, started_at = time.perf_counter(), utcnow()
        try:
            if base_name is not None:  # shared by all tenants: evaluated for the caller's
                model = ModelUnderTest.from_base(registry.get_base_model(base_name), caller.tenant)
            else:
                version = registry.get_model_version(request.model_version_id)
                if version.tenant != caller.tenant and not caller.has_role(Role.ADMIN):
                    raise PermissionDenied(
                        f"{caller.name!r} of tenant {caller.tenant!r} may not evaluate tenant "
                        f"{version.tenant!r}'s model versions"
                    )
                model = ModelUnderTest.from_version(version)
        except ValueError as exc:
            raise InvalidArgument("model_version_id", f"the registry's record: {exc}") from None
        row = self.evaluator.run(
            EvaluationRequest(
                model,
                suite=request.suite,
                suite_version=request.suite_version,
                seed=request.seed or None,
                use_case=request.use_case,
                trigger=TRIGGER_RPC,
                requested_by=caller.name,
            ),
            registry,
            correlation_id=current_correlation_id() or "",
        )
        created_at = row.created_at.replace(tzinfo=row.created_at.tzinfo or dt.UTC)
        if created_at >= started_at:  # evaluated now, not a report recorded before
            metrics.observe(TRIGGER_RPC, row.verdict, time.perf_counter() - started)
        return report_proto(row)

    def GetReport(self, request, context):
        caller = require_role(current_principal(), *READ_ROLES)
        if not request.id:
            raise InvalidArgument("id", "a report id is required")
        with Session(self.engine) as session:
            return report_proto(
                reports.get(session, request.id, tenant_scope=caller.tenant_scope())
            )

    def ListReports(self, request, context):
        caller = require_role(current_principal(), *READ_ROLES)
        offset, limit = page_bounds(request.page)
        with Session(self.engine) as session:
            rows, total = reports.list_reports(
                session,
                tenant_scope=caller.tenant_scope(),
                model_version_id=request.model_version_id,
                suite=request.suite,
                offset=offset,
                limit=limit,
            )
            return evaluation_pb2.ListReportsResponse(
                reports=[report_proto(r) for r in rows],
                page=page_response(offset, len(rows), total),
            )

    # ------------------------------------------------------------------ review

    def ListReviewItems(self, request, context):
        caller = require_role(current_principal(), *READ_ROLES)
        offset, limit = page_bounds(request.page)
        with Session(self.engine) as session:
            rows, total = review.list_items(
                session,
                tenant_scope=caller.tenant_scope(),
                unlabelled_only=request.unlabelled_only,
                report_id=request.report_id,
                suite=request.suite,
                offset=offset,
                limit=limit,
            )
            return evaluation_pb2.ListReviewItemsResponse(
                items=[review.item_proto(r) for r in rows],
                page=page_response(offset, len(rows), total),
            )

    def SubmitReviewLabel(self, request, context):
        caller = require_role(current_principal(), Role.RATER)
        score = request.score
        if not math.isfinite(score) or score != int(score) or not (score == 0 or 1 <= score <= 5):
            raise InvalidArgument("score", "must be a whole number 1..5, or 0 for no score")
        with session_scope(self.engine) as session:
            row = review.label_item(
                session,
                request.item_id,
                tenant_scope=caller.tenant_scope(),
                labelled_by=caller.name,
                score=int(score) or None,
                label=request.label.strip(),
                comment=request.comment,
            )
            return review.item_proto(row)

    # ------------------------------------------------------------------ suites

    def UploadSuite(self, request, context):
        caller = require_role(current_principal(), Role.OPERATOR)
        files: dict[str, bytes] = {}
        for i, file in enumerate(request.files):
            # The store's own rule too: a NUL, a backslash or a '..' in disguise would
            # otherwise only fail deep in the upload, as an internal error.
            try:
                check_segment(file.path, f"files[{i}].path")
            except ValueError as exc:
                raise InvalidArgument(f"files[{i}].path", str(exc)) from None
            if file.path.startswith("."):
                raise InvalidArgument(
                    f"files[{i}].path", "a plain file name of the suite folder is required"
                )
            if file.path in files:
                raise InvalidArgument(f"files[{i}].path", f"{file.path!r} is given twice")
            files[file.path] = file.content
        with session_scope(self.engine) as session:
            stored, existed = self.evaluator.suites.upload(session, files, uploaded_by=caller.name)
            return _suite_proto(stored.row, already_existed=existed)

    def ListSuites(self, request, context):
        require_role(current_principal(), *READ_ROLES)
        self.evaluator.suites.ensure_builtin()
        offset, limit = page_bounds(request.page)
        with Session(self.engine) as session:
            rows, total = self.evaluator.suites.list_suites(
                session, name=request.name, offset=offset, limit=limit
            )
            return evaluation_pb2.ListSuitesResponse(
                suites=[_suite_proto(r) for r in rows],
                page=page_response(offset, len(rows), total),
            )

    # ------------------------------------------------------------------ judge

    def GetJudgeCalibration(self, request, context):
        caller = require_role(current_principal(), *READ_ROLES)
        stored, _, _ = self.evaluator.resolve_suite(request.suite, request.suite_version)
        judge = self.evaluator.judge(self.registry.bound(forwarded_credentials(context)))
        calibration = self.evaluator.calibration(caller.tenant, stored.suite, judge)
        reply = evaluation_pb2.JudgeCalibration(
            judge=judge.id,
            judge_version=judge.version,
            suite=stored.row.name,
            suite_version=stored.row.version,
        )
        if calibration is None:
            reply.reasons.append("no anchor items: the judge is not calibrated, so not trusted")
            return reply
        reply.anchor_set_version = calibration.anchor_set_version
        reply.anchors = calibration.n
        for key in (
            "exact_agreement",
            "within_one",
            "kappa",
            "weighted_kappa",
            "pearson",
            "spearman",
        ):
            setattr(reply, key, getattr(calibration, key))
        reply.trusted = calibration.trusted
        reply.reasons.extend(calibration.reasons)
        reply.judge_scores.extend(calibration.judge_scores)
        reply.human_scores.extend(calibration.human_scores)
        return reply

    def ExportAnchors(self, request, context):
        caller = require_role(current_principal(), *READ_ROLES)
        stored, _, _ = self.evaluator.resolve_suite(request.suite, request.suite_version)
        with Session(self.engine) as session:
            items = review.anchor_set(session, caller.tenant, stored.suite)
        seed_ids = {a.id for a in stored.suite.anchors}
        return evaluation_pb2.AnchorSet(
            suite=stored.row.name,
            version=anchor_set_version(items) if items else "",
            items=len(items),
            from_reviews=sum(1 for a in items if a.id not in seed_ids),
            jsonl=dump_anchors(items),
        )


# ------------------------------------------------------------------ conversions


def _suite_proto(row: SuiteRow, *, already_existed: bool = False) -> evaluation_pb2.EvaluationSuite:
    msg = evaluation_pb2.EvaluationSuite(
        name=row.name,
        version=row.version,
        label=row.label,
        description=row.description,
        cases=row.cases,
        tags=row.tags or [],
        gate_policy=row.gate_policy,
        anchors=row.anchors,
        artifact=manifest_ref(row).to_proto(),
        uploaded_by=row.uploaded_by,
        builtin=row.builtin,
        already_existed=already_existed,
    )
    msg.created_at.FromDatetime(row.created_at)
    return msg


# ------------------------------------------------------------------ wiring

_built: dict[tuple[int, int], tuple[Evaluator, GrpcRegistry]] = {}


def build(settings: EvaluatorSettings, engine: Engine) -> tuple[Evaluator, GrpcRegistry]:
    """The evaluator and the registry client, shared by the servicer and the consumer of
    one process (one evaluation at a time, one judge loaded)."""
    key = (id(settings), id(engine))
    if key not in _built:
        if settings.torch_threads > 0:
            import torch

            torch.set_num_threads(settings.torch_threads)
        # No bucket check here: the service starts (and reports health) while S3 is still
        # coming up; the catalog makes sure of the bucket on first use.
        store = ArtifactStore.from_settings(settings.s3)
        cache = settings.cache_dir or str(Path(settings.state_dir) / "cache")
        evaluator = Evaluator(
            engine,
            store,
            SuiteCatalog(store, engine),
            ModelLoader(store, cache, device=settings.device, dtype=settings.dtype),
            settings.evaluator_config(),
        )
        registry = GrpcRegistry(settings.registry_target, timeout_s=settings.upstream_timeout_s)
        _built[key] = (evaluator, registry)
    return _built[key]


def migrate(engine: Engine) -> None:
    apply_migrations(engine, "events", EVENTS_MIGRATIONS)
    apply_migrations(engine, "evaluator", EVALUATOR_MIGRATIONS)


def register(settings: EvaluatorSettings, engine: Engine) -> list[tuple[AddServicerFn, object]]:
    migrate(engine)
    evaluator, registry = build(settings, engine)
    return [
        (
            evaluation_pb2_grpc.add_EvaluationServiceServicer_to_server,
            EvaluationServicer(settings, engine, evaluator, registry),
        )
    ]


def workers(settings: EvaluatorSettings, engine: Engine) -> list[EventRuntime]:
    """The model.registered consumer and the outbox relay."""
    evaluator, registry = build(settings, engine)
    own = registry.bound(own_credentials(settings.registry_api_key))
    return [
        EventRuntime(
            settings.kafka,
            engine,
            service_name=settings.service_name,
            group_id=settings.consumer_group,
            handlers={
                topics.MODEL_REGISTERED: lambda event, ctx: on_model_registered(
                    evaluator, own, event, ctx
                )
            },
        )
    ]
