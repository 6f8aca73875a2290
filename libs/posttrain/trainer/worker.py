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
     A job of N > 1 processes runs as the SFT recipe under torchrun instead
     (posttrain.training.distributed.launch: one process per GPU, CPU processes over gloo
     on a machine without GPUs), with the same store built in its rank 0
     (checkpoints.store_from_env): sharded checkpoints, resumed by the same N processes.
     Every step writes a progress row and a heartbeat and publishes training.progress
     (directly: a progress tick changes no state that must survive); a heartbeat thread
     keeps the job alive through downloads, model loading and uploads. A worker takes
     only jobs of at most `max_processes` processes.
     A job of N > 1 nodes runs as a gang of N workers (JobBook.join_gang): the worker
     that claims it is node 0 and the rendezvous host (`node_address`); it waits up to
     `gang_timeout_s` for N-1 idle workers to take the other seats, then every node runs
     torchrun with its node rank. Sharded checkpoints are staged in `shared_dir`, a
     folder every node sees (a ReadWriteMany volume on Kubernetes); a worker without one
     takes no multi-node job. A seat that goes (its worker stopped or died) hands the job
     back at the next step boundary, checkpointed, and a new gang resumes it.
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
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from posttrain.config import S3Settings
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
from posttrain.trainer.checkpoints import (
    FENCE_FILE,
    STORE_FACTORY,
    S3CheckpointStore,
    launch_env,
)
from posttrain.trainer.jobs import (
    Claim,
    Completion,
    GangSeat,
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
from posttrain.training.distributed import launch
from posttrain.training.report import code_version as git_code_version
from posttrain.v1 import events_pb2

log = logging.getLogger(__name__)


class GangIncomplete(Exception):
    """Fewer workers than a multi-node job needs joined it in time (retryable)."""


# Errors of the infrastructure rather than of the job: training.failed says retryable.
RETRYABLE_ERRORS = (
    GangIncomplete,
    EndpointUnreachable,
    CredentialsRefused,
    BucketMissing,
    SQLAlchemyError,
    OSError,
)

_RETRYABLE_NAMES = frozenset(e.__name__ for e in RETRYABLE_ERRORS)

ProgressSink = Callable[[str, events_pb2.TrainingProgress], None]

# transformers' from_pretrained is not thread-safe (concurrent loads in one process end
# with meta tensors), so a process trains one job at a time: run more worker processes,
# not more workers per process. Two workers in one process just take turns.
_TRAINING_LOCK = threading.Lock()
# The exception a rank died of, in torchrun's output (not torchrun's own summary of it).
# torchrun prefixes each line of a rank's stderr with "[rank<N>]: ".
_RANK_ERROR = re.compile(
    r"^(?:\[rank\d+\]:\s*)?(?!.*ChildFailedError)([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$"
)


class DistributedRunFailed(Exception):
    """The processes of a job failed; `error_type` is the exception a rank died of."""

    def __init__(self, message: str, error_type: str = "DistributedRunFailed") -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass(frozen=True)
class WorkerOptions:
    worker_id: str
    cache_dir: Path  # base models and datasets, by sha256; shared by the jobs of a machine
    work_dir: Path  # one folder per running attempt, removed when it ends
    heartbeat_interval_s: float = 5.0
    stale_after_s: float = 60.0  # a heartbeat older than this: the worker is taken for dead
    scan_interval_s: float = 5.0  # an idle worker looks for work at least this often
    checkpoint_keep_last: int | None = 2
    max_processes: int = 1  # the largest job it takes: the GPUs it has (or CPU processes)
    # A job of several processes still running this long after its cancel is terminated.
    cancel_grace_s: float | None = 300.0
    producer_name: str = "trainer"  # in the envelopes of the events it stages
    # Multi-node jobs: a folder every worker node sees (None: it takes none), the address
    # other nodes reach this one at, and how long a leader waits for its gang.
    shared_dir: Path | None = None
    node_address: str = "127.0.0.1"
    gang_timeout_s: float = 600.0

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
    gang_broken: threading.Event = dataclasses.field(default_factory=threading.Event)

    @property
    def job_id(self) -> str:
        return self.job.job_id


@dataclass
class _Outcome:
    status: str  # completed | cancelled | interrupted
    result: TrainingResult | None  # None: processes terminated before they reported
    artifacts: list[ArtifactRef] = dataclasses.field(default_factory=list)
    kind: str = ""
    last_step: int = 0  # the last step reported, when there is no result

    @property
    def steps(self) -> int:
        return self.result.steps if self.result is not None else self.last_step


class TrainingWorker:
    def __init__(
        self,
        engine: Engine,
        store: ArtifactStore,
        options: WorkerOptions,
        *,
        publish_progress: ProgressSink | None = None,
        code_version: str | None = None,
        s3: S3Settings | None = None,
    ) -> None:
        """`s3`: the settings of `store`, handed to the processes of a job of several
        (None: they read POSTTRAIN_S3_* from the environment they inherit)."""
        self.engine = engine
        self.store = store
        self.options = options
        self.worker_id = options.worker_id
        self.cache = FolderCache(store, options.cache_dir)
        self.publish_progress = publish_progress
        self.code_version = code_version or git_code_version()
        self.s3 = s3
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
        options = self.options
        multi_node = options.shared_dir is not None
        rendezvous = f"{options.node_address}:{_free_port()}" if multi_node else ""
        with session_scope(self.engine) as session:
            book = JobBook(session)
            # Seats of a gang first: a leader waiting for its nodes holds workers idle.
            seat = None
            if multi_node:
                seat = book.join_gang(
                    self.worker_id,
                    stale_after_s=options.stale_after_s,
                    max_processes=options.max_processes,
                )
            claim = None
            if seat is None:
                claim = book.claim_next(
                    self.worker_id,
                    stale_after_s=options.stale_after_s,
                    max_processes=options.max_processes,
                    max_nodes=None if multi_node else 1,
                )
            if claim is not None and claim.outcome == "run" and claim.job.nodes > 1:
                # In the claim's transaction: no worker sees the job led without an address.
                book.set_rendezvous(claim.job.job_id, self.worker_id, claim.attempt, rendezvous)
                session.refresh(claim.job)
        if seat is not None:
            with correlation_scope(seat.job.correlation_id or None):
                self._run_seat(seat)
            return seat.job.job_id
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
            error_type = getattr(exc, "error_type", type(exc).__name__)  # a rank's, if launched
            error = f"{error_type}: {exc}"
            retryable = isinstance(exc, RETRYABLE_ERRORS) or error_type in _RETRYABLE_NAMES
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
        steps = outcome.steps
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
        eval_file = data_dir / "eval.jsonl"
        eval_rows = eval_file if eval_file.is_file() else None
        lineage = Lineage(
            dataset_version=job.dataset_version,
            base_model_hash=job.base_weights_sha256,
            code_version=self.code_version,
            extra={
                "job_id": job.job_id,
                "attempt": str(run.attempt),
                "base_model": job.base_model,
                "dataset": job.dataset,
            },
        )
        if job.processes > 1 or job.nodes > 1:
            outcome = self._run_processes(run, config, data_dir / "train.jsonl", eval_rows, out)
            if outcome.result is None:
                return self._stopped(run, outcome)
            result = _with_lineage(outcome.result, lineage)
        else:
            checkpoints = S3CheckpointStore(
                self.store,
                job.job_id,
                keep_last=self.options.checkpoint_keep_last,
                before_save=lambda: self._check_owner(run),
            )
            with _TRAINING_LOCK:
                result = run_training(
                    config,
                    data_dir / "train.jsonl",
                    eval_rows,
                    out,
                    checkpoints,
                    progress=lambda event: self._on_progress(run, event),
                    should_cancel=lambda: self._should_cancel(run),
                    lineage=lineage,
                )
        if result.status == "cancelled":
            return self._stopped(run, _Outcome("cancelled", result))
        self._check_owner(run)  # a worker that lost the job publishes nothing
        refs, kind = self._publish(run, result)
        return _Outcome("completed", result, refs, kind)

    def _stopped(self, run: _Attempt, outcome: _Outcome) -> _Outcome:
        """A run that stopped before its end: cancelled, or interrupted by stop() or by a
        node of its gang that went (handed back, to resume with a new gang)."""
        if run.lost.is_set():
            raise LostOwnership(run.job_id, self.worker_id, run.attempt)
        interrupted = self._stopping.is_set() or run.gang_broken.is_set()
        outcome.status = "interrupted" if interrupted else "cancelled"
        return outcome

    def _run_processes(
        self,
        run: _Attempt,
        config: TrainingJobConfig,
        train: Path,
        eval_rows: Path | None,
        out: Path,
    ) -> _Outcome:
        """The job as the SFT recipe under torchrun with job.processes processes on this
        node. Progress comes from rank 0's progress file; a cancel, a stop or a lost job
        creates OUT/CANCEL (and, when lost, the fence that refuses checkpoints); processes
        that do not stop within cancel_grace_s are terminated."""
        last_step = 0

        def progress(event: ProgressEvent) -> None:
            nonlocal last_step
            last_step = event.step
            self._on_progress(run, event)

        nodes = run.job.nodes

        def should_cancel() -> bool:
            stop = self._should_cancel(run)
            if run.lost.is_set():
                (out / FENCE_FILE).touch()
            if nodes > 1 and not stop and not self._gang_complete(run):
                run.gang_broken.set()
                return True
            return stop

        out.mkdir(parents=True, exist_ok=True)
        log_file = out / "torchrun.log"
        env = launch_env(run.job_id, self.options.checkpoint_keep_last, self.s3)
        gang: dict = {}
        if nodes > 1:
            if not self._wait_for_gang(run):
                return _Outcome("cancelled", None)
            host, port = run.job.rendezvous.rsplit(":", 1)
            gang = dict(
                nnodes=nodes,
                node_rank=0,
                master_addr=host,
                master_port=int(port),
                staging=self._gang_staging(run.job_id, run.attempt),
            )
        launched = launch(
            config,
            train,
            eval_rows,
            out,
            nproc_per_node=run.job.processes,
            checkpoint_store=STORE_FACTORY,
            progress=progress,
            should_cancel=should_cancel,
            cancel_grace_s=self.options.cancel_grace_s,
            env={**os.environ, **env},
            output=log_file,
            **gang,
        )
        if launched.status == "failed":
            if run.lost.is_set():
                raise LostOwnership(run.job_id, self.worker_id, run.attempt)
            if nodes > 1 and not self._gang_complete(run):  # a node died: resume elsewhere
                run.gang_broken.set()
                return _Outcome("cancelled", None, last_step=last_step)
            raise _launch_failure(run.job.processes * nodes, launched.returncode, log_file)
        if launched.returncode != 0:  # terminated after its cancel: no report
            return _Outcome("cancelled", None, last_step=last_step)
        return _Outcome(launched.status, _launched_result(launched.report_path))

    # ------------------------------------------------------------------ multi-node gangs

    def _gang_staging(self, job_id: str, attempt: int) -> Path:
        assert self.options.shared_dir is not None
        return self.options.shared_dir / job_id / f"attempt-{attempt}" / "checkpoint-staging"

    def _gang_complete(self, run: _Attempt) -> bool:
        try:
            with Session(self.engine) as session:
                seats = JobBook(session).gang(
                    run.job_id, run.attempt, stale_after_s=self.options.stale_after_s
                )
        except SQLAlchemyError:  # can't tell: the heartbeat decides whether we go on
            return True
        return len(seats) == run.job.nodes - 1

    def _wait_for_gang(self, run: _Attempt) -> bool:
        """Wait until every other seat of the attempt is taken; False if the run must stop
        first (cancel, stop, lost), GangIncomplete after gang_timeout_s."""
        deadline = time.monotonic() + self.options.gang_timeout_s
        while not self._gang_complete(run):
            if self._should_cancel(run):
                return False
            if time.monotonic() > deadline:
                raise GangIncomplete(
                    f"job {run.job_id} needs {run.job.nodes} worker nodes; fewer joined within "
                    f"{self.options.gang_timeout_s:.0f}s (workers take multi-node jobs only with "
                    "a shared_dir, and only jobs of at most their max_processes per node)"
                )
            time.sleep(min(self.options.scan_interval_s, 1.0))
        log.info("job %s attempt %d: all %d nodes joined", run.job_id, run.attempt, run.job.nodes)
        return True

    def _run_seat(self, seat: GangSeat) -> None:
        """Node `seat.node_rank` of a multi-node job: torchrun with that node rank against
        the leader's rendezvous, until the run ends or the attempt is over. It records
        nothing: node 0 reports progress and the outcome. On stop() the seat is given up at
        once, so node 0 checkpoints and hands the job back."""
        job, attempt = seat.job, seat.attempt
        log.info("worker %s joins job %s attempt %d as node %d of %d",
                 self.worker_id, job.job_id, attempt, seat.node_rank, job.nodes)  # fmt: skip
        run = _Attempt(job, attempt)
        beat = threading.Thread(target=self._seat_heartbeat, args=(seat, run), daemon=True)
        beat.start()
        out = self.options.work_dir / job.job_id / f"attempt-{attempt}-node-{seat.node_rank}"
        try:
            config = TrainingJobConfig.from_yaml(job.config_yaml)
            base_dir = self.cache.get(weights_ref(job), "models")
            data_dir = self.cache.get(dataset_ref(job), "datasets")
            config = dataclasses.replace(config, base_model=str(base_dir))
            eval_file = data_dir / "eval.jsonl"
            host, port = job.rendezvous.rsplit(":", 1)
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            env = launch_env(job.job_id, self.options.checkpoint_keep_last, self.s3)
            launched = launch(
                config,
                data_dir / "train.jsonl",
                eval_file if eval_file.is_file() else None,
                out,
                nproc_per_node=job.processes,
                nnodes=job.nodes,
                node_rank=seat.node_rank,
                master_addr=host,
                master_port=int(port),
                checkpoint_store=STORE_FACTORY,
                staging=self._gang_staging(job.job_id, attempt),
                should_cancel=run.lost.is_set,  # the attempt is over: node 0 is gone
                cancel_grace_s=0.0,
                env={**os.environ, **env},
                output=out / "torchrun.log",
            )
            log.info("node %d of job %s attempt %d: %s (exit %d)",
                     seat.node_rank, job.job_id, attempt, launched.status,
                     launched.returncode)  # fmt: skip
        except Exception:  # noqa: BLE001 - node 0 sees the gang broken and hands the job back
            log.exception(
                "node %d of job %s attempt %d failed", seat.node_rank, job.job_id, attempt
            )
        finally:
            run.done.set()
            beat.join()
            shutil.rmtree(out, ignore_errors=True)

    def _seat_heartbeat(self, seat: GangSeat, run: _Attempt) -> None:
        while not run.done.wait(self.options.heartbeat_interval_s):
            try:
                with session_scope(self.engine) as session:
                    book = JobBook(session)
                    if self._stopping.is_set():
                        book.leave_gang(seat, self.worker_id)
                        return
                    book.seat_heartbeat(seat, self.worker_id)
            except LostOwnership:
                log.warning("job %s attempt %d is over; node %d stops",
                            seat.job.job_id, seat.attempt, seat.node_rank)  # fmt: skip
                run.lost.set()
                return
            except Exception:  # noqa: BLE001 - keep beating through a brief DB outage
                log.warning("seat heartbeat of job %s failed", seat.job.job_id, exc_info=True)

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


def _free_port() -> int:
    """A TCP port free on this host now, for a rendezvous this worker may host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _launched_result(report_path: Path) -> TrainingResult:
    """The TrainingResult of a run under torchrun, from the report rank 0 wrote."""
    report = json.loads(report_path.read_text())
    artifacts = {kind: Path(path) for kind, path in report["artifacts"].items()}
    kind = "merged" if "merged" in artifacts else report["method"]["artifact_kind"]
    return TrainingResult(
        status=report["status"],
        artifact_dir=artifacts.get(kind),
        artifact_kind=kind if artifacts else None,
        artifacts=artifacts,
        report_path=report_path,
        metrics=report["metrics"],
        trainable_params=report["params"]["trainable"],
        total_params=report["params"]["total"],
        steps=report["steps"],
        total_steps=report["total_steps"],
        tokens=report["tokens"],
        wall_time_s=report["wall_time_s"],
        peak_memory_bytes=report["peak_memory"]["bytes"],
        peak_memory_kind=report["peak_memory"]["kind"],
        data=report["data"],
        history=report["history"],
        eval_history=report["eval_history"],
        resumed_from_step=report["resumed_from_step"],
    )


def _with_lineage(result: TrainingResult, lineage: Lineage) -> TrainingResult:
    """The recipe under torchrun knows no job: its report gets the job's lineage here."""
    report = json.loads(result.report_path.read_text())
    seed = report["lineage"]["seed"]
    report["lineage"] = {**dataclasses.asdict(lineage.resolved()), "seed": seed}
    result.report_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return result


def _launch_failure(processes: int, returncode: int, log_file: Path) -> DistributedRunFailed:
    """The error of a failed torchrun: the first exception a rank died of, else its code."""
    lines = log_file.read_text(errors="replace").splitlines() if log_file.is_file() else []
    log.error("torchrun of %d processes exited with %d:\n%s", processes, returncode,
              "\n".join(lines[-60:]))  # fmt: skip
    for line in lines:
        match = _RANK_ERROR.match(line.strip())
        if match:
            error_type = match.group(1).rsplit(".", 1)[-1]
            return DistributedRunFailed(match.group(2), error_type)
    return DistributedRunFailed(f"torchrun of {processes} processes exited with {returncode}")
