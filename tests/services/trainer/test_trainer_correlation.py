"""A training job keeps the correlation id of the request that submitted it: the job row
holds it, and the events its worker stages later (in another thread, outside any RPC)
carry it. On SQLite, without a broker: the worker's cancel path records without training."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import sqlalchemy as sa
from prometheus_client import REGISTRY
from trainer_helpers import APPROVED_VERSION, BASE_MODEL, FAST

from posttrain.correlation import correlation_scope
from posttrain.db import create_db_engine, session_scope
from posttrain.events import OutboxEvent, add_to_outbox, decode, topics
from posttrain.storage import ArtifactRef
from posttrain.trainer import (
    JobBook,
    JobRequest,
    TrainingJobRow,
    TrainingWorker,
    WorkerOptions,
    build_job_config,
)
from services.trainer.servicer import migrate


def _book(session) -> JobBook:
    def emit(event_type, payload, *, aggregate_id):
        add_to_outbox(session, event_type, payload, producer="test", aggregate_id=aggregate_id)

    return JobBook(session, emit)


def _request() -> JobRequest:
    ref = ArtifactRef("s3://b/x/manifest.json", "0" * 64, 1, "application/json")
    return JobRequest(
        tenant="acme",
        base_model=BASE_MODEL,
        base_weights=ref,
        dataset="support",
        dataset_version=APPROVED_VERSION,
        dataset_manifest=ref,
        method="lora",
        config_yaml=build_job_config("lora", FAST).to_yaml(),
        output_name="support-bot",
        submitted_by="alice",
    )


def test_the_workers_events_carry_the_submitting_requests_correlation_id(tmp_path: Path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'trainer.sqlite3'}")
    migrate(engine)
    with correlation_scope("submit-rpc-7"), session_scope(engine) as session:
        job_id = _book(session).submit(_request()).job_id
    # Its first worker took it, a cancel was asked, and that worker died.
    with session_scope(engine) as session:
        assert _book(session).claim(job_id, "w1", stale_after_s=60).outcome == "run"
        _book(session).cancel(job_id, tenant_scope=None, by="ann")
        session.execute(
            sa.update(TrainingJobRow)
            .where(TrainingJobRow.job_id == job_id)
            .values(heartbeat_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
        )
    cancelled = REGISTRY.get_sample_value("posttrain_trainer_jobs_total", {"state": "cancelled"})
    worker = TrainingWorker(
        engine,
        None,  # the cancel path reads no artifact
        WorkerOptions(worker_id="w2", cache_dir=tmp_path / "cache", work_dir=tmp_path / "w2"),
        code_version="test",
    )
    assert worker.run_next() == job_id

    with session_scope(engine) as session:
        job = session.get(TrainingJobRow, job_id)
        assert (job.state, job.correlation_id) == ("CANCELLED", "submit-rpc-7")
        staged = [
            (row.topic, decode(row.value).correlation_id)
            for row in session.scalars(sa.select(OutboxEvent).order_by(OutboxEvent.id))
        ]
    assert staged == [
        (topics.TRAINING_REQUESTED, "submit-rpc-7"),
        (topics.TRAINING_CANCELLED, "submit-rpc-7"),
    ]
    after = REGISTRY.get_sample_value("posttrain_trainer_jobs_total", {"state": "cancelled"})
    assert after - (cancelled or 0.0) == 1
    engine.dispose()
