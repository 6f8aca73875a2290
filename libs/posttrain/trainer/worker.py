"""TrainingWorker: takes jobs from the job book, trains them with the SFT engine, publishes
what they produced and records how they ended.

The database is the queue; training.requested is the doorbell. An idle worker claims the
next job (JobBook.claim_next: a RUNNING job whose worker stopped heartbeating, else the
oldest QUEUED one) when a training.requested reaches it, and every `scan_interval_s`
anyway. So every idle worker process is capacity, whatever the partitions of the topic
and whichever worker the event went to; a job survives a lost event; and a job whose
worker died is taken over by the next idle worker once its heartbeat is stale, without
waiting for Kafka to move a partition.

A run:
  1. fetch the base model and dataset folders by their manifest refs into a local cache
     keyed by sha256 (reused by later jobs on this machine), and run_training with an
     S3CheckpointStore: a take-over on another machine resumes from the last checkpoint.
     Every step writes a progress row and a heartbeat and publishes training.progress
     (directly: a progress tick changes no state that must survive); a heartbeat thread
     keeps the job alive through downloads, model loading and uploads.
  2. publish adapter/ or model/, merged/ (if asked) and report/ as folder artifacts, then
     record SUCCEEDED with training.completed (one transaction, outbox).
A failure of the training itself is FAILED with training.failed, not retried: the same
error would come back. A cancel stops the run at the next step boundary (checkpointed):
CANCELLED with training.cancelled. A worker told to stop does the same, then hands the
job back (QUEUED) for the next worker. A worker that finds its job taken over (its
heartbeat was late) stops and records nothing: every write of its attempt is refused.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from posttrain.correlation import correlation_scope
from posttrain.db import session_scope
from posttrain.events import HandlerContext, PoisonEvent, ReceivedEvent, add_to_outbox
from posttrain.storage import (
    ArtifactRef,
    ArtifactStore,
    BucketMissing,
    CredentialsRefused,
    EndpointUnreachable,
)
from posttrain.trainer import metrics
from posttrain.trainer.checkpoints import S3CheckpointStore
from posttrain.trainer.jobs import (
    Claim,
    Completion,
    JobBook,
    LostOwnership,
    dataset_ref,
    weights_ref,
)
from posttrain.trainer.tables import TrainingJobRow
from posttrain.training import (
    Lineage,
    ProgressEvent,
    TrainingJobConfig,
    TrainingResult,
    run_training,
)
from posttrain.training.report import code_version as git_code_version
from posttrain.v1 import events_pb2

log = logging.getLogger(__name__)

# Errors of the infrastructure rather than of the job: training.failed says retryable.
RETRYABLE_ERRORS = (
    EndpointUnreachable,
    CredentialsRefused,
    BucketMissing,
    SQLAlchemyError,
    OSError,
)

ProgressSink = Callable[[str, events_pb2.TrainingProgress], None]

# transformers' from_pretrained is not thread-safe (concurrent loads in one process end
# with meta tensors), so a process trains one job at a time: run more worker processes,
# not more workers per process. Two workers in one process just take turns.
_TRAINING_LOCK = threading.Lock()


@dataclass(frozen=True)
class WorkerOptions:
    worker_id: str
    cache_dir: Path  # base models and datasets, by sha256; shared by the jobs of a machine
    work_dir: Path  # one folder per running attempt, removed when it ends
    heartbeat_interval_s: float = 5.0
    stale_after_s: float = 60.0  # a heartbeat older than this: the worker is taken for dead
    scan_interval_s: float = 5.0  # an idle worker looks for work at least this often
    checkpoint_keep_last: int | None = 2
    producer_name: str = "trainer"  # in the envelopes of the events it stages

    def __post_init__(self) -> None:
        if self.stale_after_s <= 2 * self.heartbeat_interval_s:
            raise ValueError(
                f"stale_after_s ({self.stale_after_s}) must exceed two heartbeat intervals "
                f"({self.heartbeat_interval_s}s each), or live workers are taken for dead"
            )


class FolderCache:
    """Folder artifacts downloaded once per machine, under root/<kind>/<manifest sha256>.
    A folder appears whole and verified (download_folder renames it into place last)."""

    def __init__(self, store: ArtifactStore, root: Path) -> None:
        self.store = store
        self.root = root

    def get(self, ref: ArtifactRef, kind: str) -> Path:
        dest = self.root / kind / ref.sha256
        if dest.is_dir():
            return dest
        try:
            return self.store.download_folder(ref, dest)
        except OSError:
            if dest.is_dir() and any(dest.iterdir()):  # another job on this machine won
                return dest
            raise


@dataclass
class _Attempt:
    """One run of one job by this worker."""

    job: TrainingJobRow
    attempt: int
    lost: threading.Event = dataclasses.field(default_factory=threading.Event)
    done: threading.Event = dataclasses.field(default_factory=threading.Event)

    @property
    def job_id(self) -> str:
        return self.job.job_id


@dataclass
class _Outcome:
    status: str  # completed | cancelled | interrupted
    result: TrainingResult
    artifacts: list[ArtifactRef] = dataclasses.field(default_factory=list)
    kind: str = ""


class TrainingWorker:
    def __init__(
        self,
        engine: Engine,
        store: ArtifactStore,
        options: WorkerOptions,
        *,
        publish_progress: ProgressSink | None = None,
        code_version: str | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.options = options
        self.worker_id = options.worker_id
        self.cache = FolderCache(store, options.cache_dir)
        self.publish_progress = publish_progress
        self.code_version = code_version or git_code_version()
        self._stopping = threading.Event()
        self._doorbell = threading.Event()

    # ------------------------------------------------------------------ the loop

    def on_training_requested(self, event: ReceivedEvent, ctx: HandlerContext) -> None:
        """The training.requested handler: wake the loop. Idempotent: a doorbell rung twice
        finds the job taken, or ended, the second time."""
        payload = event.payload()
        if not isinstance(payload, events_pb2.TrainingRequested) or not payload.job_id:
            raise PoisonEvent(f"{event.topic} record is not a TrainingRequested with a job id")
        if ctx.session.get(TrainingJobRow, payload.job_id) is None:
            raise PoisonEvent(f"training job {payload.job_id} is not in this trainer's database")
        self._doorbell.set()

    def run_forever(self) -> None:
        """Run jobs one after another until stop()."""
        while not self._stopping.is_set():
            try:
                ran = self.run_next()
            except Exception:  # noqa: BLE001 - the database away: keep the worker alive
                log.exception("worker %s could not take a job", self.worker_id)
                ran = None
            if ran is None:
                self._doorbell.wait(self.options.scan_interval_s)
                self._doorbell.clear()

    def stop(self) -> None:
        """A running job stops at its next step boundary (checkpointed) and is handed back;
        run_forever returns after it."""
        self._stopping.set()
        self._doorbell.set()

    def run_next(self) -> str | None:
        """Claim the next job and run it to its end; its id, or None if there was none."""
        if self._stopping.is_set():
            return None
        with session_scope(self.engine) as session:
            claim = JobBook(session).claim_next(
                self.worker_id, stale_after_s=self.options.stale_after_s
            )
        if claim is None:
            return None
        self.run_claimed(claim)
        return claim.job.job_id

    def run_claimed(self, claim: Claim) -> None:
        """Runs the job under its correlation id: its log lines and events carry it."""
        with correlation_scope(claim.job.correlation_id or None):
            self._run_claimed(claim)

    def _run_claimed(self, claim: Claim) -> None:
        job, attempt = claim.job, claim.attempt
        if claim.outcome == "cancel":  # its cancel was asked, then its worker died
            self._record(
                lambda b: b.finish_cancelled(job.job_id, self.worker_id, attempt, at_step=job.step)
            )
            metrics.JOBS.labels("cancelled").inc()
            return
        run = _Attempt(job, attempt)
        log.info("worker %s runs job %s (attempt %d)", self.worker_id, run.job_id, attempt)
        heartbeat = threading.Thread(
            target=self._heartbeat, args=(run,), name=f"heartbeat-{run.job_id[:8]}", daemon=True
        )
        heartbeat.start()
        try:
            self._run_and_record(run)
        except LostOwnership:
            log.warning("job %s attempt %d was taken over; dropped here", run.job_id, attempt)
        finally:
            metrics.TOKENS_PER_SECOND.set(0)
            run.done.set()
            heartbeat.join()
            shutil.rmtree(self._work_dir(run), ignore_errors=True)

    def _run_and_record(self, run: _Attempt) -> None:
        """Train, then record how it ended. A failure to record (the database away) leaves
        the job RUNNING: its heartbeat stops, and the next worker resumes and records it."""
        job_id, attempt = run.job_id, run.attempt
        try:
            outcome = self._execute(run)
        except LostOwnership:
            raise
        except Exception as exc:  # noqa: BLE001 - the job's own failure: recorded, not retried
            if run.lost.is_set():
                raise LostOwnership(job_id, self.worker_id, attempt) from exc
            log.exception("job %s attempt %d failed", job_id, attempt)
            error_type = type(exc).__name__
            error = f"{error_type}: {exc}"
            retryable = isinstance(exc, RETRYABLE_ERRORS)
            self._record(
                lambda b: b.fail(
                    job_id,
                    self.worker_id,
                    attempt,
                    error=error,
                    error_type=error_type,
                    retryable=retryable,
                )
            )
            metrics.JOBS.labels("failed").inc()
            return
        steps = outcome.result.steps
        if outcome.status == "interrupted":
            self._record(lambda b: b.release(job_id, self.worker_id, attempt))
            log.info("job %s handed back at step %d", job_id, steps)
            metrics.JOBS.labels("released").inc()
        elif outcome.status == "cancelled":
            self._record(
                lambda b: b.finish_cancelled(job_id, self.worker_id, attempt, at_step=steps)
            )
            metrics.JOBS.labels("cancelled").inc()
        else:
            done = self._completion(run, outcome)
            self._record(lambda b: b.complete(job_id, self.worker_id, attempt, done))
            metrics.JOBS.labels("succeeded").inc()

    def _record(self, change: Callable[[JobBook], object]) -> None:
        """One state change and its event, in one transaction."""
        with session_scope(self.engine) as session:

            def emit(event_type, payload, *, aggregate_id):
                return add_to_outbox(
                    session,
                    event_type,
                    payload,
                    producer=self.options.producer_name,
                    aggregate_id=aggregate_id,
                )

            change(JobBook(session, emit))

    # ------------------------------------------------------------------ one attempt

    def _work_dir(self, run: _Attempt) -> Path:
        return self.options.work_dir / run.job_id / f"attempt-{run.attempt}"

    def _execute(self, run: _Attempt) -> _Outcome:
        job = run.job
        config = TrainingJobConfig.from_yaml(job.config_yaml)
        base_dir = self.cache.get(weights_ref(job), "models")
        data_dir = self.cache.get(dataset_ref(job), "datasets")
        config = dataclasses.replace(config, base_model=str(base_dir))
        out = self._work_dir(run)
        shutil.rmtree(out, ignore_errors=True)
        checkpoints = S3CheckpointStore(
            self.store,
            job.job_id,
            keep_last=self.options.checkpoint_keep_last,
            before_save=lambda: self._check_owner(run),
        )
        eval_rows = data_dir / "eval.jsonl"
        with _TRAINING_LOCK:
            result = run_training(
                config,
                data_dir / "train.jsonl",
                eval_rows if eval_rows.is_file() else None,
                out,
                checkpoints,
                progress=lambda event: self._on_progress(run, event),
                should_cancel=lambda: self._should_cancel(run),
                lineage=Lineage(
                    dataset_version=job.dataset_version,
                    base_model_hash=job.base_weights_sha256,
                    code_version=self.code_version,
                    extra={
                        "job_id": job.job_id,
                        "attempt": str(run.attempt),
                        "base_model": job.base_model,
                        "dataset": job.dataset,
                    },
                ),
            )
        if result.status == "cancelled":
            if run.lost.is_set():
                raise LostOwnership(run.job_id, self.worker_id, run.attempt)
            return _Outcome("interrupted" if self._stopping.is_set() else "cancelled", result)
        self._check_owner(run)  # a worker that lost the job publishes nothing
        refs, kind = self._publish(run, result)
        return _Outcome("completed", result, refs, kind)

    def _publish(self, run: _Attempt, result: TrainingResult) -> tuple[list[ArtifactRef], str]:
        """Every artifact under models/<tenant>/<output>/<job>/attempt-<n>/<kind>: names
        are immutable, and a dead attempt may have published some of its own already."""
        job = run.job
        prefix = f"models/{job.tenant}/{job.output_name}/{job.job_id}/attempt-{run.attempt}"
        primary = "merged" if "merged" in result.artifacts else next(iter(result.artifacts))
        order = [primary, *(k for k in result.artifacts if k != primary)]
        metadata = {"job_id": job.job_id, "tenant": job.tenant, "output_name": job.output_name}
        refs = [
            self.store.put_folder(
                result.artifacts[kind], f"{prefix}/{kind}", metadata={**metadata, "kind": kind}
            )
            for kind in order
        ]
        refs.append(
            self.store.put_folder(
                result.report_path.parent,
                f"{prefix}/report",
                metadata={**metadata, "kind": "report"},
            )
        )
        return refs, primary

    def _completion(self, run: _Attempt, outcome: _Outcome) -> Completion:
        result = outcome.result
        metrics = dict(result.metrics)
        metrics.update(
            train_tokens=float(result.tokens),
            trainable_params=float(result.trainable_params),
            wall_time_s=float(result.wall_time_s),
        )
        return Completion(
            artifacts=outcome.artifacts,
            kind=outcome.kind,
            metrics=metrics,
            steps=result.steps,
            total_steps=result.total_steps,
            final_loss=result.history[-1]["loss"] if result.history else None,
            resumed_from_step=result.resumed_from_step,
            code_version=self.code_version,
            seed=TrainingJobConfig.from_yaml(run.job.config_yaml).seed,
        )

    # ------------------------------------------------------------------ engine callbacks

    def _check_owner(self, run: _Attempt) -> None:
        with Session(self.engine) as session:
            try:
                JobBook(session).cancel_requested(run.job_id, self.worker_id, run.attempt)
            except LostOwnership:
                run.lost.set()
                raise

    def _should_cancel(self, run: _Attempt) -> bool:
        """Checked by the engine before every step: a cancel, a shutdown, a lost job."""
        if self._stopping.is_set() or run.lost.is_set():
            return True
        try:
            with Session(self.engine) as session:
                return JobBook(session).cancel_requested(run.job_id, self.worker_id, run.attempt)
        except LostOwnership:
            run.lost.set()
            return True
        except SQLAlchemyError:
            log.warning("could not read the cancel flag of job %s", run.job_id, exc_info=True)
            return False

    def _on_progress(self, run: _Attempt, event: ProgressEvent) -> None:
        metrics.STEPS.labels(run.job.method).inc()
        metrics.TOKENS_PER_SECOND.set(event.tokens_per_second)
        try:
            with session_scope(self.engine) as session:
                JobBook(session).record_progress(run.job_id, self.worker_id, run.attempt, event)
        except LostOwnership:
            run.lost.set()
            raise
        except SQLAlchemyError:  # the heartbeat thread still keeps the job alive
            log.warning("could not record progress of job %s", run.job_id, exc_info=True)
        if self.publish_progress is None:
            return
        try:
            self.publish_progress(
                run.job_id,
                events_pb2.TrainingProgress(
                    job_id=run.job_id,
                    step=event.step,
                    total_steps=event.total_steps,
                    loss=event.loss,
                    learning_rate=event.learning_rate,
                    tokens_per_second=event.tokens_per_second,
                    eta_seconds=event.eta_seconds,
                    eval_loss=event.eval_loss if event.eval_loss is not None else 0.0,
                    worker_id=self.worker_id,
                ),
            )
        except Exception:  # noqa: BLE001 - a lost progress tick must not fail the job
            log.warning("could not publish progress of job %s", run.job_id, exc_info=True)

    def _heartbeat(self, run: _Attempt) -> None:
        while not run.done.wait(self.options.heartbeat_interval_s):
            try:
                with session_scope(self.engine) as session:
                    JobBook(session).heartbeat(run.job_id, self.worker_id, run.attempt)
            except LostOwnership:
                log.warning("job %s attempt %d was taken over", run.job_id, run.attempt)
                run.lost.set()
                return
            except Exception:  # noqa: BLE001 - keep beating through a brief DB outage
                log.warning("heartbeat of job %s failed", run.job_id, exc_info=True)
