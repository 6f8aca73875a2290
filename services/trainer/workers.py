"""The worker side of a trainer process: a TrainingWorker running jobs one after another,
beside the process's event runtime (the training.requested consumer group that rings its
doorbell, the outbox relay that publishes what it records, the producer of its progress
ticks). Start more worker processes to add capacity: each idle one takes the next job.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from pathlib import Path

import torch
from sqlalchemy import Engine

from posttrain.events import EventRuntime, topics
from posttrain.storage import ArtifactStore
from posttrain.trainer import TrainingWorker, WorkerOptions
from posttrain.v1 import events_pb2
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def worker_options(settings: TrainerSettings) -> WorkerOptions:
    state = Path(settings.state_dir)
    return WorkerOptions(
        worker_id=settings.worker_id or default_worker_id(),
        cache_dir=Path(settings.worker_cache_dir or state / "cache"),
        work_dir=Path(settings.worker_work_dir or state / "jobs"),
        heartbeat_interval_s=settings.worker_heartbeat_interval_s,
        stale_after_s=settings.worker_stale_after_s,
        scan_interval_s=settings.worker_scan_interval_s,
        checkpoint_keep_last=settings.worker_checkpoint_keep_last,
        max_processes=settings.worker_max_processes or max(torch.cuda.device_count(), 1),
        cancel_grace_s=settings.worker_cancel_grace_s,
        producer_name=settings.service_name,
        shared_dir=Path(settings.worker_shared_dir) if settings.worker_shared_dir else None,
        node_address=settings.worker_node_address or _host_address(),
        gang_timeout_s=settings.worker_gang_timeout_s,
    )


def _host_address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


class WorkerRuntime:
    """start()/stop() like any BackgroundWorker of service_main."""

    def __init__(
        self,
        settings: TrainerSettings,
        engine: Engine,
        *,
        store: ArtifactStore | None = None,
        options: WorkerOptions | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or ArtifactStore.from_settings(settings.s3)
        self.worker = TrainingWorker(
            engine,
            self.store,
            options or worker_options(settings),
            publish_progress=self._publish,
            s3=settings.s3,  # for the processes of a job of several
        )
        self.events = EventRuntime(
            settings.kafka,
            engine,
            service_name=settings.service_name,
            handlers={topics.TRAINING_REQUESTED: self.worker.on_training_requested},
            group_id=settings.worker_group,
        )
        self._thread: threading.Thread | None = None

    @property
    def worker_id(self) -> str:
        return self.worker.worker_id

    def start(self) -> WorkerRuntime:
        self.events.start()
        self._thread = threading.Thread(
            target=self.worker.run_forever, name="trainer-worker", daemon=True
        )
        self._thread.start()
        log.info("training worker %s started", self.worker_id)
        return self

    def _publish(self, job_id: str, progress: events_pb2.TrainingProgress) -> None:
        producer = self.events.producer
        if producer is not None:
            producer.publish(topics.TRAINING_PROGRESS, progress, aggregate_id=job_id, wait=False)

    def stop(self, timeout_s: float = 120.0) -> None:
        """A running job stops at its next step boundary, is checkpointed and handed back
        (QUEUED) for the next worker; then the event runtime stops."""
        self.worker.stop()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.events.stop()
        log.info("training worker %s stopped", self.worker_id)
