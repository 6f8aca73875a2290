"""JobBook: the life of a training job in the database, and the events that announce it.

    QUEUED ──claim──▶ RUNNING ──complete──▶ SUCCEEDED   (training.completed)
      │                 │ ├────fail──────▶ FAILED      (training.failed)
      │                 │ └──cancelled───▶ CANCELLED   (training.cancelled)
      └──cancel──▶ CANCELLED (at once)     ▲ cancel of a RUNNING job sets cancel_requested;
                                           │ its worker stops at the next step boundary.

The table is the queue. Workers own a RUNNING job through (worker_id, attempt). A claim
takes a QUEUED job, or a RUNNING one whose heartbeat is stale (its worker died; an idle
worker takes those first: claim_next): attempt + 1, so every later write
of the dead attempt (progress, heartbeat, completion) matches no row and raises
LostOwnership instead of overwriting the new owner's state. Claims and cancels are
compare-and-set UPDATEs, so two workers (or a worker and a cancel) racing on one job
can't both win, on SQLite or PostgreSQL.

Every state change that other services act on is staged through `emit` in the caller's
transaction (the outbox): the change and its event commit together. Knows nothing of
gRPC or Kafka: callers pass a Session and an emit.

A job of N > 1 nodes is a gang: the worker that claims it leads the attempt (node 0,
the torchrun rendezvous host; it writes its address with set_rendezvous), and N-1 idle
workers take the other seats with join_gang (training_job_nodes, one row per seat and
attempt). A seat is valid only while its attempt is the job's current RUNNING one: a
take-over (attempt + 1) voids every seat of the old attempt.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.orm import Session

from posttrain.correlation import correlation_scope, current_correlation_id, new_correlation_id
from posttrain.db import utcnow
from posttrain.events import topics
from posttrain.rpc.errors import FailedPrecondition, NotFound
from posttrain.storage import MANIFEST_MEDIA_TYPE, ArtifactRef
from posttrain.trainer.tables import JobNodeRow, JobProgressRow, TrainingJobRow
from posttrain.training import ProgressEvent
from posttrain.v1 import common_pb2, events_pb2

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "QUEUED",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
)
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

METHOD_TO_PROTO = {
    "full": common_pb2.TUNING_METHOD_FULL,
    "lora": common_pb2.TUNING_METHOD_LORA,
    "qlora": common_pb2.TUNING_METHOD_QLORA,
    "prefix": common_pb2.TUNING_METHOD_PREFIX,
    "prompt": common_pb2.TUNING_METHOD_PROMPT,
    "ia3": common_pb2.TUNING_METHOD_IA3,
}
PROTO_TO_METHOD = {v: k for k, v in METHOD_TO_PROTO.items()}
KIND_TO_PROTO = {
    "adapter": common_pb2.MODEL_KIND_ADAPTER,
    "merged": common_pb2.MODEL_KIND_MERGED,
    "full": common_pb2.MODEL_KIND_FULL,
}
MAX_ERROR_CHARS = 4000


class Emit(Protocol):
    """Stages an event in the caller's transaction (HandlerContext.emit, or an outbox
    wrapper in an RPC)."""

    def __call__(self, event_type: str, payload: Message, *, aggregate_id: str) -> Any: ...


class LostOwnership(Exception):
    """The job is no longer this worker's attempt: another worker took it over after this
    one's heartbeat went stale, or it ended. Nothing of this attempt may be recorded."""

    def __init__(self, job_id: str, worker_id: str, attempt: int) -> None:
        super().__init__(
            f"job {job_id} attempt {attempt} is no longer owned by worker {worker_id!r}"
        )
        self.job_id, self.worker_id, self.attempt = job_id, worker_id, attempt


@dataclass(frozen=True)
class JobRequest:
    """A checked SubmitJob: every reference already resolved to what it names now."""

    tenant: str
    base_model: str
    base_weights: ArtifactRef  # the base model folder's manifest
    dataset: str
    dataset_version: str
    dataset_manifest: ArtifactRef  # the dataset version folder's manifest
    method: str  # a name in posttrain.training.METHODS
    config_yaml: str  # TrainingJobConfig YAML, without machine paths
    output_name: str
    submitted_by: str
    processes: int = 1  # > 1: torchrun with that many processes on each worker node
    nodes: int = 1  # > 1: a gang of that many worker nodes, one torchrun rendezvous


@dataclass(frozen=True)
class GangSeat:
    """A worker's seat in an attempt of a multi-node job: node `node_rank` of job.nodes,
    joining the rendezvous `job.rendezvous` (host:port of node 0)."""

    job: TrainingJobRow
    attempt: int
    node_rank: int


@dataclass(frozen=True)
class Claim:
    """What a worker may do with a job it asked for.

    run: the job is this worker's now, as `attempt`. wait: another worker is running it
    and heartbeating. skip: it already ended. cancel: its cancel was requested and its
    worker died; this worker owns it (as `attempt`) only to record the cancellation.
    missing: no such job in this database."""

    outcome: Literal["run", "wait", "skip", "cancel", "missing"]
    job: TrainingJobRow | None
    attempt: int = 0


@dataclass(frozen=True)
class Completion:
    """What a finished run produced, for complete()."""

    artifacts: Sequence[ArtifactRef]  # the primary artifact first, the report last
    kind: str  # of the primary artifact: adapter | merged | full
    metrics: dict[str, float]
    steps: int
    total_steps: int
    final_loss: float | None
    resumed_from_step: int | None
    code_version: str
    seed: int
    extra_lineage: dict[str, str] = field(default_factory=dict)


def new_job_id() -> str:
    return uuid.uuid4().hex


def weights_ref(job: TrainingJobRow) -> ArtifactRef:
    return ArtifactRef(
        job.base_weights_uri, job.base_weights_sha256, job.base_weights_size, MANIFEST_MEDIA_TYPE
    )


def dataset_ref(job: TrainingJobRow) -> ArtifactRef:
    return ArtifactRef(
        job.dataset_manifest_uri,
        job.dataset_manifest_sha256,
        job.dataset_manifest_size,
        MANIFEST_MEDIA_TYPE,
    )


def artifact_refs(job: TrainingJobRow) -> list[ArtifactRef]:
    return [ArtifactRef(**a) for a in job.artifacts or []]


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands timestamps back without a zone; they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


class JobBook:
    """Jobs in the transaction of `session`; events staged through `emit`."""

    def __init__(self, session: Session, emit: Emit | None = None) -> None:
        self.session = session
        self._emit = emit

    def emit(self, event_type: str, payload: Message, job_id: str) -> None:
        if self._emit is None:
            raise RuntimeError("this JobBook was opened without emit: it cannot change state")
        self._emit(event_type, payload, aggregate_id=job_id)

    # ------------------------------------------------------------------ API side

    def submit(self, request: JobRequest, *, job_id: str | None = None) -> TrainingJobRow:
        """Record a QUEUED job and stage training.requested. The job keeps the current
        correlation id (the submitting RPC's) for the events its worker stages later."""
        now = utcnow()
        correlation_id = current_correlation_id() or new_correlation_id()
        job = TrainingJobRow(
            job_id=job_id or new_job_id(),
            tenant=request.tenant,
            state=QUEUED,
            base_model=request.base_model,
            base_weights_uri=request.base_weights.uri,
            base_weights_sha256=request.base_weights.sha256,
            base_weights_size=request.base_weights.size_bytes,
            dataset=request.dataset,
            dataset_version=request.dataset_version,
            dataset_manifest_uri=request.dataset_manifest.uri,
            dataset_manifest_sha256=request.dataset_manifest.sha256,
            dataset_manifest_size=request.dataset_manifest.size_bytes,
            method=request.method,
            processes=request.processes,
            nodes=request.nodes,
            rendezvous="",
            config_yaml=request.config_yaml,
            output_name=request.output_name,
            submitted_by=request.submitted_by,
            correlation_id=correlation_id,
            step=0,
            total_steps=0,
            error="",
            error_type="",
            attempt=0,
            cancel_requested=False,
            cancelled_by="",
            cancel_reason="",
            artifacts=[],
            metrics={},
            created_at=now,
            updated_at=now,
        )
        self.session.add(job)
        self.session.flush()
        with correlation_scope(correlation_id):
            self.emit(
                topics.TRAINING_REQUESTED,
                events_pb2.TrainingRequested(
                    job_id=job.job_id,
                    base_model=job.base_model,
                    dataset=job.dataset,
                    dataset_version=job.dataset_version,
                    method=METHOD_TO_PROTO[job.method],
                    config_yaml=job.config_yaml,
                    output_name=job.output_name,
                    tenant=job.tenant,
                    attempt=1,
                ),
                job.job_id,
            )
        return job

    def get(self, job_id: str, *, tenant_scope: str | None) -> TrainingJobRow:
        """The job; NotFound also when it belongs to a tenant outside `tenant_scope`
        (None: every tenant), so that ids of other tenants' jobs are not confirmed."""
        job = self.session.get(TrainingJobRow, job_id, populate_existing=True)
        if job is None or (tenant_scope is not None and job.tenant != tenant_scope):
            raise NotFound("training job", job_id)
        return job

    def list_jobs(
        self, *, tenant_scope: str | None, state: str | None, offset: int, limit: int
    ) -> tuple[list[TrainingJobRow], int]:
        """Jobs, newest first, and how many match."""
        where = []
        if tenant_scope is not None:
            where.append(TrainingJobRow.tenant == tenant_scope)
        if state:
            where.append(TrainingJobRow.state == state)
        total = self.session.scalar(
            sa.select(sa.func.count()).select_from(TrainingJobRow).where(*where)
        )
        rows = self.session.scalars(
            sa.select(TrainingJobRow)
            .where(*where)
            .order_by(TrainingJobRow.created_at.desc(), TrainingJobRow.job_id)
            .offset(offset)
            .limit(limit)
        ).all()
        return list(rows), int(total or 0)

    def progress_after(self, job_id: str, after_id: int, limit: int = 500) -> list[JobProgressRow]:
        """Progress rows of the job with id > after_id, oldest first."""
        return list(
            self.session.scalars(
                sa.select(JobProgressRow)
                .where(JobProgressRow.job_id == job_id, JobProgressRow.id > after_id)
                .order_by(JobProgressRow.id)
                .limit(limit)
            )
        )

    def cancel(
        self, job_id: str, *, tenant_scope: str | None, by: str, reason: str = ""
    ) -> TrainingJobRow:
        """QUEUED: CANCELLED now, with training.cancelled. RUNNING: cancel_requested; the
        worker records CANCELLED at the next step boundary. Cancelling a cancelled job
        again changes nothing; a SUCCEEDED or FAILED job can't be cancelled."""
        for _ in range(10):
            job = self.get(job_id, tenant_scope=tenant_scope)
            if job.state == CANCELLED or (job.state == RUNNING and job.cancel_requested):
                return job
            if job.state in TERMINAL:
                raise FailedPrecondition(f"training job {job_id} already ended: {job.state}")
            values: dict[str, Any] = {"cancelled_by": by, "cancel_reason": reason[:2000]}
            if job.state == QUEUED:
                values |= {"state": CANCELLED, "finished_at": utcnow()}
            else:
                values |= {"cancel_requested": True}
            if self._compare_and_set(job, **values):
                if job.state == QUEUED:
                    self.emit(
                        topics.TRAINING_CANCELLED,
                        events_pb2.TrainingCancelled(job_id=job_id, cancelled_by=by, at_step=0),
                        job_id,
                    )
                return self.get(job_id, tenant_scope=tenant_scope)
        raise FailedPrecondition(f"training job {job_id} keeps changing; try again")

    # ------------------------------------------------------------------ worker side

    def claim(self, job_id: str, worker_id: str, *, stale_after_s: float) -> Claim:
        """Decide what `worker_id` does with the job (see Claim), taking it when it may."""
        for _ in range(10):
            job = self.session.get(TrainingJobRow, job_id, populate_existing=True)
            if job is None:
                return Claim("missing", None)
            if job.state in TERMINAL:
                return Claim("skip", job, job.attempt)
            # A RUNNING job under this worker's own id was left by its previous process.
            mine = job.worker_id == worker_id
            if job.state == RUNNING and not mine and not self._stale(job, stale_after_s):
                return Claim("wait", job, job.attempt)
            now = utcnow()
            taken = self._compare_and_set(
                job,
                state=RUNNING,
                attempt=job.attempt + 1,
                worker_id=worker_id,
                heartbeat_at=now,
                started_at=job.started_at or now,
            )
            if taken:
                job = self.session.get(TrainingJobRow, job_id, populate_existing=True)
                assert job is not None
                return Claim("cancel" if job.cancel_requested else "run", job, job.attempt)
        return Claim("wait", self.session.get(TrainingJobRow, job_id), 0)

    def claim_next(
        self,
        worker_id: str,
        *,
        stale_after_s: float,
        max_processes: int | None = None,
        max_nodes: int | None = None,
        limit: int = 20,
    ) -> Claim | None:
        """Take the next job for an idle worker: first a RUNNING job whose worker stopped
        heartbeating (it has checkpoints to resume from), then the oldest QUEUED one; only
        jobs of at most `max_processes` processes and `max_nodes` nodes (None: any).
        Returns a "run" or "cancel" Claim, or None when there is nothing to take."""
        fits = _fits(max_processes, max_nodes)
        running = self.session.scalars(
            sa.select(TrainingJobRow).where(TrainingJobRow.state == RUNNING, *fits)
        ).all()
        orphans = [
            j.job_id
            for j in sorted(running, key=lambda j: j.created_at)
            if j.worker_id == worker_id or self._stale(j, stale_after_s)
        ]
        queued = self.session.scalars(
            sa.select(TrainingJobRow.job_id)
            .where(TrainingJobRow.state == QUEUED, *fits)
            .order_by(TrainingJobRow.created_at, TrainingJobRow.job_id)
            .limit(limit)
        ).all()
        for job_id in [*orphans, *queued]:
            claim = self.claim(job_id, worker_id, stale_after_s=stale_after_s)
            if claim.outcome in ("run", "cancel"):
                return claim
        return None

    # ------------------------------------------------------------------ multi-node gangs

    def set_rendezvous(self, job_id: str, worker_id: str, attempt: int, address: str) -> None:
        """The leader's host:port for this attempt's torchrun rendezvous."""
        self._update_owned(job_id, worker_id, attempt, rendezvous=address)

    def join_gang(
        self,
        worker_id: str,
        *,
        stale_after_s: float,
        max_processes: int | None = None,
    ) -> GangSeat | None:
        """Take a free seat (node 1..N-1) in the current attempt of a RUNNING multi-node job
        whose leader is alive and has published its rendezvous; None when none is open.
        Two workers racing for one seat: the primary key lets one insert win."""
        for _ in range(10):
            opening = self._open_seat(worker_id, stale_after_s, max_processes)
            if opening is None:
                return None
            job, node_rank = opening
            now = utcnow()
            self.session.add(
                JobNodeRow(
                    job_id=job.job_id,
                    attempt=job.attempt,
                    node_rank=node_rank,
                    worker_id=worker_id,
                    joined_at=now,
                    heartbeat_at=now,
                )
            )
            try:
                self.session.flush()
            except sa.exc.IntegrityError:  # another worker took this seat first: look again
                self.session.rollback()
                continue
            return GangSeat(job, job.attempt, node_rank)
        return None

    def _open_seat(
        self, worker_id: str, stale_after_s: float, max_processes: int | None
    ) -> tuple[TrainingJobRow, int] | None:
        running = self.session.scalars(
            sa.select(TrainingJobRow)
            .where(
                TrainingJobRow.state == RUNNING,
                TrainingJobRow.nodes > 1,
                TrainingJobRow.rendezvous != "",
                TrainingJobRow.worker_id != worker_id,
                *_fits(max_processes, None),
            )
            .order_by(TrainingJobRow.created_at)
        ).all()
        for job in running:
            if self._stale(job, stale_after_s) or job.cancel_requested:
                continue
            seats = self._seats(job.job_id, job.attempt)
            if worker_id in seats.values():
                continue
            free = [r for r in range(1, job.nodes) if r not in seats]
            if free:
                return job, free[0]
        return None

    def gang(self, job_id: str, attempt: int, *, stale_after_s: float) -> dict[int, str]:
        """The seats of an attempt whose workers are alive: node_rank -> worker_id."""
        rows = self.session.scalars(
            sa.select(JobNodeRow).where(JobNodeRow.job_id == job_id, JobNodeRow.attempt == attempt)
        ).all()
        now = utcnow()
        return {
            r.node_rank: r.worker_id
            for r in rows
            if (now - as_utc(r.heartbeat_at)).total_seconds() <= stale_after_s
        }

    def seat_heartbeat(self, seat: GangSeat, worker_id: str) -> None:
        """Keep a seat alive; LostOwnership once its attempt is over (ended, taken over,
        handed back) or the seat is not this worker's."""
        job = self.session.execute(
            sa.select(TrainingJobRow.state, TrainingJobRow.attempt).where(
                TrainingJobRow.job_id == seat.job.job_id
            )
        ).one_or_none()
        if job is None or (job.state, job.attempt) != (RUNNING, seat.attempt):
            raise LostOwnership(seat.job.job_id, worker_id, seat.attempt)
        result = self.session.execute(
            sa.update(JobNodeRow)
            .where(
                JobNodeRow.job_id == seat.job.job_id,
                JobNodeRow.attempt == seat.attempt,
                JobNodeRow.node_rank == seat.node_rank,
                JobNodeRow.worker_id == worker_id,
            )
            .values(heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            raise LostOwnership(seat.job.job_id, worker_id, seat.attempt)

    def leave_gang(self, seat: GangSeat, worker_id: str) -> None:
        """Give the seat up (its worker is stopping): node 0 sees it gone at once."""
        self.session.execute(
            sa.delete(JobNodeRow).where(
                JobNodeRow.job_id == seat.job.job_id,
                JobNodeRow.attempt == seat.attempt,
                JobNodeRow.node_rank == seat.node_rank,
                JobNodeRow.worker_id == worker_id,
            )
        )

    def _seats(self, job_id: str, attempt: int) -> dict[int, str]:
        rows = self.session.execute(
            sa.select(JobNodeRow.node_rank, JobNodeRow.worker_id).where(
                JobNodeRow.job_id == job_id, JobNodeRow.attempt == attempt
            )
        ).all()
        return {r.node_rank: r.worker_id for r in rows}

    def heartbeat(self, job_id: str, worker_id: str, attempt: int) -> bool:
        """Tell the others this attempt is alive; returns whether a cancel was requested.
        LostOwnership if the job is not this attempt's any more."""
        self._update_owned(job_id, worker_id, attempt, heartbeat_at=utcnow())
        return self.cancel_requested(job_id, worker_id, attempt)

    def cancel_requested(self, job_id: str, worker_id: str, attempt: int) -> bool:
        """Whether the job's cancel was requested; LostOwnership if it is not ours."""
        row = self.session.execute(
            sa.select(
                TrainingJobRow.state,
                TrainingJobRow.worker_id,
                TrainingJobRow.attempt,
                TrainingJobRow.cancel_requested,
            ).where(TrainingJobRow.job_id == job_id)
        ).one_or_none()
        if row is None or (row.state, row.worker_id, row.attempt) != (RUNNING, worker_id, attempt):
            raise LostOwnership(job_id, worker_id, attempt)
        return bool(row.cancel_requested)

    def record_progress(
        self, job_id: str, worker_id: str, attempt: int, event: ProgressEvent
    ) -> None:
        """One optimizer step: a progress row, and the job's step, loss and heartbeat."""
        now = utcnow()
        self._update_owned(
            job_id,
            worker_id,
            attempt,
            step=event.step,
            total_steps=event.total_steps,
            last_loss=event.loss,
            heartbeat_at=now,
        )
        self.session.add(
            JobProgressRow(
                job_id=job_id,
                attempt=attempt,
                worker_id=worker_id,
                step=event.step,
                total_steps=event.total_steps,
                epoch=event.epoch,
                loss=event.loss,
                learning_rate=event.learning_rate,
                grad_norm=event.grad_norm,
                tokens_per_second=event.tokens_per_second,
                eta_seconds=event.eta_seconds,
                eval_loss=event.eval_loss,
                at=now,
            )
        )

    def release(self, job_id: str, worker_id: str, attempt: int) -> None:
        """Give a RUNNING job back (this worker is shutting down): QUEUED again, so the
        next worker that receives its training.requested takes it at once."""
        self._update_owned(job_id, worker_id, attempt, state=QUEUED, worker_id=None)

    def complete(
        self, job_id: str, worker_id: str, attempt: int, done: Completion
    ) -> TrainingJobRow:
        """SUCCEEDED, with training.completed (artifact refs, metrics, lineage)."""
        self._update_owned(
            job_id,
            worker_id,
            attempt,
            state=SUCCEEDED,
            step=done.steps,
            total_steps=done.total_steps,
            last_loss=done.final_loss,
            resumed_from_step=done.resumed_from_step,
            artifacts=[_ref_dict(a) for a in done.artifacts],
            metrics=dict(done.metrics),
            finished_at=utcnow(),
        )
        job = self.session.get(TrainingJobRow, job_id, populate_existing=True)
        assert job is not None
        lineage = common_pb2.Lineage(
            dataset_version=job.dataset_version,
            base_model=f"{job.base_model}@{job.base_weights_sha256}",
            training_job_id=job.job_id,
            code_version=done.code_version,
            seed=done.seed,
            extra={
                "dataset": job.dataset,
                "dataset_manifest_sha256": job.dataset_manifest_sha256,
                **done.extra_lineage,
            },
        )
        self.emit(
            topics.TRAINING_COMPLETED,
            events_pb2.TrainingCompleted(
                job_id=job.job_id,
                output_name=job.output_name,
                base_model=f"{job.base_model}@{job.base_weights_sha256}",
                method=METHOD_TO_PROTO[job.method],
                kind=KIND_TO_PROTO[done.kind],
                artifacts=[a.to_proto() for a in done.artifacts],
                metrics=done.metrics,
                lineage=lineage,
                tenant=job.tenant,
                config_yaml=job.config_yaml,
            ),
            job_id,
        )
        return job

    def fail(
        self,
        job_id: str,
        worker_id: str,
        attempt: int,
        *,
        error: str,
        error_type: str,
        retryable: bool,
    ) -> None:
        """FAILED, with training.failed naming the error."""
        error = error[:MAX_ERROR_CHARS]
        self._update_owned(
            job_id,
            worker_id,
            attempt,
            state=FAILED,
            error=error,
            error_type=error_type[:200],
            finished_at=utcnow(),
        )
        self.emit(
            topics.TRAINING_FAILED,
            events_pb2.TrainingFailed(
                job_id=job_id, error=error, error_type=error_type, retryable=retryable
            ),
            job_id,
        )

    def finish_cancelled(self, job_id: str, worker_id: str, attempt: int, *, at_step: int) -> None:
        """CANCELLED after the worker stopped at a step boundary, with training.cancelled."""
        job = self.session.get(TrainingJobRow, job_id, populate_existing=True)
        self._update_owned(
            job_id, worker_id, attempt, state=CANCELLED, step=at_step, finished_at=utcnow()
        )
        self.emit(
            topics.TRAINING_CANCELLED,
            events_pb2.TrainingCancelled(
                job_id=job_id, cancelled_by=job.cancelled_by if job else "", at_step=at_step
            ),
            job_id,
        )

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _stale(job: TrainingJobRow, stale_after_s: float) -> bool:
        beat = as_utc(job.heartbeat_at)
        return beat is None or (utcnow() - beat).total_seconds() > stale_after_s

    def _compare_and_set(self, seen: TrainingJobRow, **values: Any) -> bool:
        """UPDATE the job only if it is still as `seen` (state, attempt, owner)."""
        result = self.session.execute(
            sa.update(TrainingJobRow)
            .where(
                TrainingJobRow.job_id == seen.job_id,
                TrainingJobRow.state == seen.state,
                TrainingJobRow.attempt == seen.attempt,
                TrainingJobRow.cancel_requested == seen.cancel_requested,
                TrainingJobRow.worker_id.is_(None)
                if seen.worker_id is None
                else TrainingJobRow.worker_id == seen.worker_id,
            )
            .values(updated_at=utcnow(), **values)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1

    def _update_owned(self, job_id: str, owner: str, owned_attempt: int, **values: Any) -> None:
        """UPDATE the job only while it is RUNNING as (owner, owned_attempt)."""
        result = self.session.execute(
            sa.update(TrainingJobRow)
            .where(
                TrainingJobRow.job_id == job_id,
                TrainingJobRow.state == RUNNING,
                TrainingJobRow.worker_id == owner,
                TrainingJobRow.attempt == owned_attempt,
            )
            .values(updated_at=utcnow(), **values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            raise LostOwnership(job_id, owner, owned_attempt)


def _fits(max_processes: int | None, max_nodes: int | None) -> list[sa.ColumnElement[bool]]:
    """The jobs a worker can run: at most max_processes per node, max_nodes nodes."""
    fits = [] if max_processes is None else [TrainingJobRow.processes <= max_processes]
    return fits if max_nodes is None else [*fits, TrainingJobRow.nodes <= max_nodes]


def _ref_dict(ref: ArtifactRef) -> dict[str, Any]:
    return {
        "uri": ref.uri,
        "sha256": ref.sha256,
        "size_bytes": ref.size_bytes,
        "media_type": ref.media_type,
    }
