"""The TrainingService gRPC servicer: a thin shell over posttrain.trainer.

Who may call what (admin holds every role):

| RPC                          | role                                      |
|------------------------------|-------------------------------------------|
| SubmitJob, CancelJob         | trainer                                   |
| GetJob, ListJobs, WatchJob   | any role                                  |

Tenants: a caller sees and cancels only its own tenant's jobs (another tenant's job is
NOT_FOUND; naming another tenant in a request is PERMISSION_DENIED); admin may read and
cancel any tenant's. SubmitJob trains for the caller's own tenant: it asks intake and the
registry with the caller's own key, so their tenant rules hold for the job too.

SubmitJob refuses, before anything is recorded: a bad argument (INVALID_ARGUMENT naming
it, e.g. `hyperparameters.lr` or `resources.processes`), an unknown dataset version or
base model (NOT_FOUND), a dataset version that is not APPROVED (FAILED_PRECONDITION
naming its state).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from posttrain.db import apply_migrations, session_scope
from posttrain.events import EVENTS_MIGRATIONS, outbox_emitter
from posttrain.intake import check_name, check_version_id
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
from posttrain.trainer import (
    METHOD_TO_PROTO,
    PROTO_TO_METHOD,
    TERMINAL,
    TRAINER_MIGRATIONS,
    JobBook,
    JobRequest,
    TrainingJobRow,
    artifact_refs,
    build_job_config,
    job_resources,
)
from posttrain.trainer.tables import JobProgressRow
from posttrain.v1 import common_pb2, training_pb2, training_pb2_grpc
from services.trainer.lookups import (
    BaseModelLookup,
    DatasetLookup,
    GrpcBaseModelLookup,
    GrpcDatasetLookup,
    forwarded_credentials,
    training_inputs,
)
from services.trainer.settings import TrainerSettings

SERVICE_NAME = training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name
READ_ROLES = tuple(sorted(ROLES))

STATE_TO_PROTO = {
    "QUEUED": training_pb2.JOB_STATE_QUEUED,
    "RUNNING": training_pb2.JOB_STATE_RUNNING,
    "SUCCEEDED": training_pb2.JOB_STATE_SUCCEEDED,
    "FAILED": training_pb2.JOB_STATE_FAILED,
    "CANCELLED": training_pb2.JOB_STATE_CANCELLED,
}
PROTO_TO_STATE = {v: k for k, v in STATE_TO_PROTO.items()}


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    def __init__(
        self,
        settings: TrainerSettings,
        engine: Engine,
        datasets: DatasetLookup,
        base_models: BaseModelLookup,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.datasets = datasets
        self.base_models = base_models

    # ------------------------------------------------------------------ submit

    def SubmitJob(self, request, context):
        caller = require_role(current_principal(), Role.TRAINER)
        if request.tenant and request.tenant != caller.tenant:
            raise PermissionDenied(
                f"{caller.name!r} of tenant {caller.tenant!r} may not submit jobs for tenant "
                f"{request.tenant!r} (a job trains on the caller's own tenant's data)"
            )
        names.check(names.BASE_MODEL_NAME, request.base_model, "base_model", "base model name")
        check_name(request.dataset, "dataset")
        check_version_id(request.dataset_version, "dataset_version")
        names.check(names.MODEL_NAME, request.output_name, "output_name", "model name")
        method = ""
        if request.method != common_pb2.TUNING_METHOD_UNSPECIFIED:
            method = PROTO_TO_METHOD.get(request.method, "")
            if not method:
                raise InvalidArgument("method", f"unknown tuning method {request.method}")
        config = build_job_config(
            method,
            dict(request.hyperparameters),
            request.config_yaml,
            defaults={"checkpoint_every": self.settings.default_checkpoint_every},
        )
        processes, nodes = job_resources(
            request.resources.processes,
            request.resources.nodes,
            config.method,
            max_processes=self.settings.max_job_processes,
            max_nodes=self.settings.max_job_nodes,
        )

        _, weights, manifest = training_inputs(
            self.datasets,
            self.base_models,
            dataset=request.dataset,
            dataset_version=request.dataset_version,
            base_model=request.base_model,
            credentials=forwarded_credentials(context),
        )

        with session_scope(self.engine) as session:
            job = JobBook(session, _outbox_emit(session)).submit(
                JobRequest(
                    tenant=caller.tenant,
                    base_model=request.base_model,
                    base_weights=weights,
                    dataset=request.dataset,
                    dataset_version=request.dataset_version,
                    dataset_manifest=manifest,
                    method=config.method,
                    config_yaml=config.to_yaml(),
                    output_name=request.output_name,
                    submitted_by=caller.name,
                    processes=processes,
                    nodes=nodes,
                )
            )
            return job_proto(job)

    # ------------------------------------------------------------------ reads

    def GetJob(self, request, context):
        caller = require_role(current_principal(), *READ_ROLES)
        with Session(self.engine) as session:
            return job_proto(
                JobBook(session).get(_job_id(request.job_id), tenant_scope=caller.tenant_scope())
            )

    def ListJobs(self, request, context):
        caller = require_role(current_principal(), *READ_ROLES)
        if request.tenant and request.tenant != caller.tenant and not caller.has_role(Role.ADMIN):
            raise PermissionDenied(
                f"{caller.name!r} of tenant {caller.tenant!r} may not list tenant "
                f"{request.tenant!r}'s jobs"
            )
        state = None
        if request.state != training_pb2.JOB_STATE_UNSPECIFIED:
            state = PROTO_TO_STATE.get(request.state)
            if state is None:
                raise InvalidArgument("state", f"unknown job state {request.state}")
        offset, limit = page_bounds(request.page)
        with Session(self.engine) as session:
            rows, total = JobBook(session).list_jobs(
                tenant_scope=request.tenant or caller.tenant_scope(),
                state=state,
                offset=offset,
                limit=limit,
            )
            return training_pb2.ListJobsResponse(
                jobs=[job_proto(r) for r in rows],
                page=page_response(offset, len(rows), total),
            )

    def CancelJob(self, request, context):
        caller = require_role(current_principal(), Role.TRAINER)
        with session_scope(self.engine) as session:
            job = JobBook(session, _outbox_emit(session)).cancel(
                _job_id(request.job_id),
                tenant_scope=caller.tenant_scope(),
                by=caller.name,
                reason=request.reason,
            )
            return job_proto(job)

    def WatchJob(self, request, context):
        """Progress of the job: every step it reaches (each once, in increasing order,
        also across a resume) and every change of state; ends after its final state."""
        caller = require_role(current_principal(), *READ_ROLES)
        job_id, scope = _job_id(request.job_id), caller.tenant_scope()
        with Session(self.engine) as session:
            JobBook(session).get(job_id, tenant_scope=scope)  # NOT_FOUND before streaming
        return self._watch(job_id, scope, context)

    def _watch(self, job_id: str, scope: str | None, context) -> Iterator[training_pb2.JobProgress]:
        last_id, last_step, last_loss, last_state = 0, 0, 0.0, ""
        while True:
            with Session(self.engine) as session:
                book = JobBook(session)
                # The job first: progress rows committed before its state are then all seen.
                job = book.get(job_id, tenant_scope=scope)
                rows: list[JobProgressRow] = []
                while batch := book.progress_after(job_id, last_id):
                    rows += batch
                    last_id = batch[-1].id
            for row in rows:
                if row.step > last_step:
                    last_step, last_loss = row.step, row.loss
                    yield _progress_proto(row)
            if job.state != last_state:
                last_state = job.state
                if job.step > last_step:  # else the job row is older than the rows just sent
                    last_step, last_loss = job.step, job.last_loss or 0.0
                yield training_pb2.JobProgress(
                    job_id=job.job_id,
                    state=STATE_TO_PROTO[job.state],
                    step=last_step,
                    total_steps=job.total_steps,
                    loss=last_loss,
                )
            if job.state in TERMINAL or not context.is_active():
                return
            time.sleep(self.settings.watch_poll_s)


# ------------------------------------------------------------------ conversions


def job_proto(job: TrainingJobRow) -> training_pb2.TrainingJob:
    msg = training_pb2.TrainingJob(
        job_id=job.job_id,
        state=STATE_TO_PROTO[job.state],
        base_model=job.base_model,
        dataset=job.dataset,
        dataset_version=job.dataset_version,
        method=METHOD_TO_PROTO[job.method],
        output_name=job.output_name,
        tenant=job.tenant,
        submitted_by=job.submitted_by,
        step=job.step,
        total_steps=job.total_steps,
        last_loss=job.last_loss or 0.0,
        error=job.error,
        worker_id=job.worker_id or "",
        attempt=job.attempt,
        artifacts=[ref.to_proto() for ref in artifact_refs(job)],
        config_yaml=job.config_yaml,
        resources=training_pb2.TrainingResources(processes=job.processes, nodes=job.nodes),
    )
    msg.created_at.FromDatetime(job.created_at)
    msg.updated_at.FromDatetime(job.updated_at)
    return msg


def _progress_proto(row: JobProgressRow) -> training_pb2.JobProgress:
    return training_pb2.JobProgress(
        job_id=row.job_id,
        state=training_pb2.JOB_STATE_RUNNING,
        step=row.step,
        total_steps=row.total_steps,
        loss=row.loss,
        learning_rate=row.learning_rate,
        tokens_per_second=row.tokens_per_second,
        eta_seconds=row.eta_seconds,
        eval_loss=row.eval_loss or 0.0,
    )


# ------------------------------------------------------------------ helpers


def _job_id(value: str) -> str:
    if not value:
        raise InvalidArgument("job_id", "is required")
    if len(value) > 32 or not value.isalnum():
        raise InvalidArgument("job_id", f"{value[:40]!r} is not a job id")
    return value


def _outbox_emit(session: Session):
    return outbox_emitter(
        session, producer="trainer", correlation_id=current_correlation_id() or ""
    )


def migrate(engine: Engine) -> None:
    apply_migrations(engine, "events", EVENTS_MIGRATIONS)
    apply_migrations(engine, "trainer", TRAINER_MIGRATIONS)


def register(settings: TrainerSettings, engine: Engine) -> list[tuple[AddServicerFn, object]]:
    migrate(engine)
    servicer = TrainingServicer(
        settings,
        engine,
        GrpcDatasetLookup(settings.intake_target, timeout_s=settings.upstream_timeout_s),
        GrpcBaseModelLookup(settings.registry_target, timeout_s=settings.upstream_timeout_s),
    )
    return [(training_pb2_grpc.add_TrainingServiceServicer_to_server, servicer)]
