"""Multi-node jobs through the real trainer: SubmitJob with resources.nodes, a gang of
workers (the one that claims the job hosts the torchrun rendezvous, others take the
remaining seats), each node running torchrun with its node rank (2 CPU "nodes" over gloo
on this host: the same path as pods on several machines, static rendezvous by address),
sharded checkpoints staged in the workers' shared folder and kept in S3.

The 2-node job trains batch_size 2 per process; its reference is a 1-process job with
batch_size 4: the same global batches, tolerance as tests/libs/training (2e-6 relative).
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy.orm import Session
from trainer_helpers import FAST, wait_for

from posttrain.db import session_scope
from posttrain.storage import ArtifactRef
from posttrain.trainer import JobBook, S3CheckpointStore
from posttrain.trainer.jobs import LostOwnership
from posttrain.trainer.tables import JobNodeRow, JobProgressRow
from posttrain.v1 import training_pb2

LOSS_RTOL = 2e-6
NO_DROPOUT = {**FAST, "dropout": "0.0"}
TWO_NODES = training_pb2.TrainingResources(processes=1, nodes=2)


@pytest.fixture
def nodes_trainer(sqlite_trainer):
    sqlite_trainer.settings.max_job_nodes = 2
    return sqlite_trainer


def _progress(trainer, job_id: str) -> list[JobProgressRow]:
    with Session(trainer.engine) as session:
        return JobBook(session).progress_after(job_id, 0)


def _seats(trainer, job_id: str) -> list[tuple[int, int, str]]:
    with Session(trainer.engine) as session:
        rows = session.query(JobNodeRow).filter_by(job_id=job_id).all()
        return sorted((r.attempt, r.node_rank, r.worker_id) for r in rows)


def test_a_two_node_job_matches_one_process_on_the_same_global_batch(nodes_trainer, tmp_path):
    trainer = nodes_trainer
    shared = tmp_path / "shared"
    two = trainer.submit(hyperparameters={**NO_DROPOUT, "batch_size": "2"}, resources=TWO_NODES)
    assert (two.resources.processes, two.resources.nodes) == (1, 2)
    trainer.start_worker("lead", shared_dir=shared)
    wait_for("the leader's claim", lambda: trainer.job(two.job_id).state == "RUNNING")
    trainer.start_worker("second", shared_dir=shared)
    done_two = trainer.wait_state(two.job_id, "SUCCEEDED", timeout_s=300)
    one = trainer.submit(hyperparameters={**NO_DROPOUT, "batch_size": "4"})
    done_one = trainer.wait_state(one.job_id, "SUCCEEDED", timeout_s=300)
    assert (done_two.step, done_one.step) == (6, 6)
    assert done_two.worker_id == "lead"
    assert _seats(trainer, two.job_id) == [(1, 1, "second")]

    # Progress from global rank 0 (on the leader) only, the losses of one process.
    rows_two, rows_one = _progress(trainer, two.job_id), _progress(trainer, one.job_id)
    assert [r.step for r in rows_two] == [r.step for r in rows_one] == [1, 2, 3, 4, 5, 6]
    assert {r.worker_id for r in rows_two} == {"lead"}
    for ours, theirs in zip(rows_two, rows_one, strict=True):
        assert ours.loss == pytest.approx(theirs.loss, rel=LOSS_RTOL)
    assert done_two.last_loss == pytest.approx(done_one.last_loss, rel=LOSS_RTOL)

    # Both nodes' shards were staged in the shared folder and kept whole in S3.
    checkpoints = S3CheckpointStore(trainer.store, two.job_id)
    folder = checkpoints.load(checkpoints.latest_step(), tmp_path / "checkpoint")
    state = json.loads((folder / "state.json").read_text())
    assert state["world_size"] == 2
    got = trainer.stub("eve").GetJob(training_pb2.GetJobRequest(job_id=two.job_id))
    assert got.resources.nodes == 2
    report_dir = trainer.store.download_folder(
        ArtifactRef.from_proto(got.artifacts[-1]), tmp_path / "report"
    )
    report = json.loads((report_dir / "training_report.json").read_text())
    assert report["processes"] == 2 and report["status"] == "completed"
    assert not any(shared.rglob("*.distcp"))  # staging cleared after each save


@pytest.mark.slow
def test_a_node_that_leaves_hands_the_job_back_and_a_new_gang_resumes(nodes_trainer, tmp_path):
    trainer = nodes_trainer
    shared = tmp_path / "shared"
    job = trainer.submit(
        hyperparameters={
            **NO_DROPOUT,
            "max_steps": "30",
            "batch_size": "1",
            "grad_accum": "4",
            "checkpoint_every": "1000",  # only the one the hand-back makes
        },
        resources=TWO_NODES,
    )
    trainer.start_worker("lead", shared_dir=shared)
    wait_for("the leader's claim", lambda: trainer.job(job.job_id).state == "RUNNING")
    second = trainer.start_worker("second", shared_dir=shared)
    wait_for("a few steps", lambda: trainer.job(job.job_id).step >= 2, timeout_s=180)
    second.stop()  # its seat goes: node 0 checkpoints at the next step and hands back
    trainer.workers.remove(second)
    wait_for(
        "the hand-back",
        lambda: trainer.job(job.job_id).attempt >= 2 or trainer.job(job.job_id).state == "QUEUED",
        timeout_s=120,
    )
    trainer.start_worker("third", shared_dir=shared)
    done = trainer.wait_state(job.job_id, "SUCCEEDED", timeout_s=300)
    assert done.step == 30 and done.attempt == 2
    assert done.resumed_from_step is not None and 2 <= done.resumed_from_step < 30
    rows = _progress(trainer, job.job_id)
    assert [r.step for r in rows if r.attempt == 2] == list(range(done.resumed_from_step + 1, 31))
    assert (2, 1, "third") in _seats(trainer, job.job_id)


def test_a_job_whose_gang_never_forms_fails_retryable_with_the_reason(nodes_trainer, tmp_path):
    trainer = nodes_trainer
    job = trainer.submit(resources=TWO_NODES)
    trainer.start_worker("alone", shared_dir=tmp_path / "shared", gang_timeout_s=2.0)
    failed = trainer.wait_state(job.job_id, "FAILED", timeout_s=60)
    assert "needs 2 worker nodes" in failed.error and "GangIncomplete" in failed.error


def test_a_worker_without_a_shared_folder_takes_no_multi_node_job(nodes_trainer):
    trainer = nodes_trainer
    job = trainer.submit(resources=TWO_NODES)
    small = trainer.submit()
    trainer.start_worker("plain")
    trainer.wait_state(small.job_id, "SUCCEEDED", timeout_s=120)
    assert trainer.job(job.job_id).state == "QUEUED"


def test_gang_seats_are_taken_once_and_end_with_their_attempt(nodes_trainer):
    trainer = nodes_trainer
    trainer.settings.max_job_nodes = 3
    job_id = trainer.submit(resources=training_pb2.TrainingResources(nodes=3)).job_id
    with session_scope(trainer.engine) as session:
        book = JobBook(session)
        assert book.join_gang("w2", stale_after_s=60) is None  # nobody leads it yet
        claim = book.claim_next("w1", stale_after_s=60)
        book.set_rendezvous(job_id, "w1", claim.attempt, "10.0.0.1:29500")
    with session_scope(trainer.engine) as session:
        book = JobBook(session)
        assert book.join_gang("w1", stale_after_s=60) is None  # the leader has node 0
        first = book.join_gang("w2", stale_after_s=60)
        assert book.join_gang("w2", stale_after_s=60) is None  # one seat per worker
        second = book.join_gang("w3", stale_after_s=60)
        assert book.join_gang("w4", stale_after_s=60) is None  # full
        assert (first.node_rank, second.node_rank) == (1, 2)
        assert first.job.rendezvous == "10.0.0.1:29500"
        assert book.gang(job_id, claim.attempt, stale_after_s=60) == {1: "w2", 2: "w3"}
        book.seat_heartbeat(first, "w2")
        book.leave_gang(second, "w3")
        assert book.gang(job_id, claim.attempt, stale_after_s=60) == {1: "w2"}
        book.release(job_id, "w1", claim.attempt)  # the attempt ends: its seats are void
    with session_scope(trainer.engine) as session:
        with pytest.raises(LostOwnership):
            JobBook(session).seat_heartbeat(first, "w2")
