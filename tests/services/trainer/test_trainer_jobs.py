"""The job book's rules for workers on SQLite and PostgreSQL (claim, take-over after a dead
heartbeat, fencing of a dead attempt, cancel, hand-back), and the S3 checkpoint store."""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from trainer_helpers import outbox

from posttrain.db import session_scope
from posttrain.events import add_to_outbox, topics
from posttrain.storage import ArtifactRef
from posttrain.trainer import (
    Completion,
    FolderCache,
    JobBook,
    LostOwnership,
    S3CheckpointStore,
    TrainingJobRow,
)
from posttrain.training import ProgressEvent


def _book(session: Session) -> JobBook:
    def emit(event_type, payload, *, aggregate_id):
        add_to_outbox(session, event_type, payload, producer="test", aggregate_id=aggregate_id)

    return JobBook(session, emit)


def _do(trainer, action):
    with session_scope(trainer.engine) as session:
        return action(_book(session))


def _step(n: int) -> ProgressEvent:
    return ProgressEvent(n, 10, 0, 2.0 - n / 10, 1e-3, 0.5, 1000.0, 9.0, None)


def _age_heartbeat(trainer, job_id: str, seconds: float) -> None:
    with session_scope(trainer.engine) as session:
        session.execute(
            sa.update(TrainingJobRow)
            .where(TrainingJobRow.job_id == job_id)
            .values(heartbeat_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds))
        )


def test_claim_wait_take_over_and_fence_the_dead_attempt(trainer):
    job_id = trainer.submit().job_id
    first = _do(trainer, lambda b: b.claim(job_id, "w1", stale_after_s=30))
    assert (first.outcome, first.attempt) == ("run", 1)
    _do(trainer, lambda b: b.record_progress(job_id, "w1", 1, _step(1)))
    # w1 is alive: a redelivery to w2 waits.
    assert _do(trainer, lambda b: b.claim(job_id, "w2", stale_after_s=30)).outcome == "wait"

    _age_heartbeat(trainer, job_id, 60)  # w1 died
    second = _do(trainer, lambda b: b.claim(job_id, "w2", stale_after_s=30))
    assert (second.outcome, second.attempt, second.job.worker_id) == ("run", 2, "w2")

    # Whatever the dead attempt still tries to write is refused.
    for late in (
        lambda b: b.record_progress(job_id, "w1", 1, _step(2)),
        lambda b: b.heartbeat(job_id, "w1", 1),
        lambda b: b.fail(job_id, "w1", 1, error="x", error_type="X", retryable=False),
        lambda b: b.complete(job_id, "w1", 1, _completion(trainer)),
    ):
        with pytest.raises(LostOwnership):
            _do(trainer, late)

    _do(trainer, lambda b: b.record_progress(job_id, "w2", 2, _step(2)))
    assert _do(trainer, lambda b: b.heartbeat(job_id, "w2", 2)) is False  # no cancel asked
    _do(trainer, lambda b: b.complete(job_id, "w2", 2, _completion(trainer)))
    job = trainer.job(job_id)
    assert (job.state, job.step, job.attempt, job.worker_id) == ("SUCCEEDED", 10, 2, "w2")
    assert _do(trainer, lambda b: b.claim(job_id, "w3", stale_after_s=30)).outcome == "skip"
    assert _do(trainer, lambda b: b.claim("f" * 32, "w3", stale_after_s=30)).outcome == "missing"
    [(_, completed)] = outbox(trainer.engine, topics.TRAINING_COMPLETED)
    assert completed.lineage.base_model == f"tiny-llama@{trainer.inputs.weights.sha256}"
    assert completed.lineage.dataset_version == job.dataset_version


def test_only_one_of_two_racing_claims_wins(trainer):
    job_id = trainer.submit().job_id
    results: list[str] = []
    barrier = threading.Barrier(2)

    def claim(worker: str) -> None:
        barrier.wait()
        results.append(_do(trainer, lambda b: b.claim(job_id, worker, stale_after_s=30)).outcome)

    threads = [threading.Thread(target=claim, args=(w,)) for w in ("w1", "w2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["run", "wait"]
    assert trainer.job(job_id).attempt == 1


def test_cancel_of_a_running_job_is_recorded_by_its_worker(trainer):
    job_id = trainer.submit().job_id
    _do(trainer, lambda b: b.claim(job_id, "w1", stale_after_s=30))
    asked = _do(trainer, lambda b: b.cancel(job_id, tenant_scope="acme", by="alice"))
    assert (asked.state, asked.cancel_requested) == ("RUNNING", True)
    assert _do(trainer, lambda b: b.cancel_requested(job_id, "w1", 1)) is True
    _do(trainer, lambda b: b.finish_cancelled(job_id, "w1", 1, at_step=4))
    job = trainer.job(job_id)
    assert (job.state, job.step) == ("CANCELLED", 4)
    [(_, event)] = outbox(trainer.engine, topics.TRAINING_CANCELLED)
    assert (event.cancelled_by, event.at_step) == ("alice", 4)


def test_a_cancelled_job_whose_worker_died_is_closed_by_the_next(trainer):
    job_id = trainer.submit().job_id
    _do(trainer, lambda b: b.claim(job_id, "w1", stale_after_s=30))
    _do(trainer, lambda b: b.cancel(job_id, tenant_scope=None, by="root"))
    _age_heartbeat(trainer, job_id, 60)
    claim = _do(trainer, lambda b: b.claim(job_id, "w2", stale_after_s=30))
    assert (claim.outcome, claim.attempt) == ("cancel", 2)


def test_a_job_handed_back_is_taken_at_once(trainer):
    job_id = trainer.submit().job_id
    _do(trainer, lambda b: b.claim(job_id, "w1", stale_after_s=30))
    _do(trainer, lambda b: b.release(job_id, "w1", 1))
    assert (trainer.job(job_id).state, trainer.job(job_id).worker_id) == ("QUEUED", None)
    claim = _do(trainer, lambda b: b.claim(job_id, "w2", stale_after_s=30))
    assert (claim.outcome, claim.attempt) == ("run", 2)


def test_an_idle_worker_takes_a_dead_workers_job_before_queued_ones(trainer):
    older, newer = trainer.submit().job_id, trainer.submit().job_id
    assert _do(trainer, lambda b: b.claim_next("w1", stale_after_s=30)).job.job_id == older
    taken = _do(trainer, lambda b: b.claim_next("w2", stale_after_s=30))
    assert (taken.job.job_id, taken.attempt) == (newer, 1)
    assert _do(trainer, lambda b: b.claim_next("w3", stale_after_s=30)) is None  # all busy

    third = trainer.submit().job_id
    _age_heartbeat(trainer, newer, 60)  # w2 died
    orphan = _do(trainer, lambda b: b.claim_next("w3", stale_after_s=30))
    assert (orphan.outcome, orphan.job.job_id, orphan.attempt) == ("run", newer, 2)
    assert _do(trainer, lambda b: b.claim_next("w4", stale_after_s=30)).job.job_id == third
    # A worker restarted under its old id takes its own job back at once.
    again = _do(trainer, lambda b: b.claim_next("w1", stale_after_s=30))
    assert (again.job.job_id, again.attempt) == (older, 2)


def _completion(trainer) -> Completion:
    return Completion(
        artifacts=[trainer.inputs.weights],
        kind="adapter",
        metrics={"final_loss": 1.0},
        steps=10,
        total_steps=10,
        final_loss=1.0,
        resumed_from_step=None,
        code_version="test",
        seed=0,
    )


# ---------------------------------------------------------------- checkpoints, cache


def test_checkpoints_in_s3(store, tmp_path):
    job_id = uuid.uuid4().hex
    checkpoints = S3CheckpointStore(store, job_id, keep_last=2)
    assert checkpoints.latest_step() is None
    for step in (1, 2, 3):
        folder = tmp_path / f"ckpt-{step}"
        folder.mkdir()
        (folder / "state.json").write_text(f'{{"step": {step}}}')
        (folder / "trainable.safetensors").write_bytes(bytes([step]) * 100)
        checkpoints.save(step, folder)
    assert checkpoints.steps() == [2, 3] and checkpoints.latest_step() == 3
    loaded = checkpoints.load(3, tmp_path / "restore" / "checkpoint")
    assert (loaded / "state.json").read_text() == '{"step": 3}'
    # Saving a step again (a finished run resumed) replaces it.
    (tmp_path / "ckpt-3" / "state.json").write_text('{"step": 3, "again": true}')
    checkpoints.save(3, tmp_path / "ckpt-3")
    assert "again" in (checkpoints.load(3, tmp_path / "again") / "state.json").read_text()
    # A save interrupted before its manifest (the blobs only) is not a checkpoint.
    store.put_bytes(b"half of step 4")
    assert checkpoints.latest_step() == 3

    def refuse() -> None:
        raise LostOwnership(job_id, "w1", 1)

    with pytest.raises(LostOwnership):
        S3CheckpointStore(store, job_id, before_save=refuse).save(4, tmp_path / "ckpt-3")
    assert checkpoints.steps() == [2, 3]


def test_folder_cache_downloads_once(store, inputs, tmp_path, monkeypatch):
    cache = FolderCache(store, tmp_path / "cache")
    first = cache.get(inputs.weights, "models")
    assert (first / "config.json").is_file() and first.name == inputs.weights.sha256

    def no_download(*_args, **_kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(store, "download_folder", no_download)
    assert cache.get(inputs.weights, "models") == first
    assert isinstance(inputs.weights, ArtifactRef)
