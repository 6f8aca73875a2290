"""Jobs of several processes through the real trainer: SubmitJob with resources.processes,
a worker that runs the SFT recipe under torchrun (2 CPU processes over gloo here, the
same path as N GPUs), sharded checkpoints in S3, progress relayed from rank 0, the
artifact published and training.completed; stop + resume and cancel through the worker.

The 2-process job trains batch_size 2 per process; its reference is a 1-process job with
batch_size 4: the same global batches. Tolerance as in
tests/libs/training/test_training_distributed.py (2e-6 relative on CPU fp32). Each launch
starts torchrun and two Python processes: ~15 s on the 2 shared cores of a dev machine.
"""

from __future__ import annotations

import json

import grpc
import pytest
from sqlalchemy.orm import Session
from trainer_helpers import FAST, outbox, wait_for

from posttrain.db import session_scope
from posttrain.events import add_to_outbox, topics
from posttrain.rpc.errors import field_violations
from posttrain.storage import ArtifactRef
from posttrain.trainer import JobBook, S3CheckpointStore
from posttrain.trainer.tables import JobProgressRow
from posttrain.v1 import common_pb2, training_pb2

LOSS_RTOL = 2e-6
NO_DROPOUT = {**FAST, "dropout": "0.0"}  # rank 1 would draw other dropout masks


def _progress(trainer, job_id: str) -> list[JobProgressRow]:
    with Session(trainer.engine) as session:
        return JobBook(session).progress_after(job_id, 0)


def test_a_two_process_job_matches_one_process_on_the_same_global_batch(sqlite_trainer, tmp_path):
    trainer = sqlite_trainer
    trainer.start_worker("w1", max_processes=2)
    two = trainer.submit(
        hyperparameters={**NO_DROPOUT, "batch_size": "2"},
        resources=training_pb2.TrainingResources(processes=2),
    )
    one = trainer.submit(hyperparameters={**NO_DROPOUT, "batch_size": "4"})
    assert two.resources.processes == 2 and one.resources.processes == 1
    done_two = trainer.wait_state(two.job_id, "SUCCEEDED", timeout_s=300)
    done_one = trainer.wait_state(one.job_id, "SUCCEEDED", timeout_s=300)
    assert (done_two.step, done_two.total_steps) == (done_one.step, done_one.total_steps) == (6, 6)

    # Progress from rank 0 only: one row per step, with loss and tokens/s.
    rows_two, rows_one = _progress(trainer, two.job_id), _progress(trainer, one.job_id)
    assert [r.step for r in rows_two] == [r.step for r in rows_one] == [1, 2, 3, 4, 5, 6]
    assert all(r.tokens_per_second > 0 and r.worker_id == "w1" for r in rows_two)
    for ours, theirs in zip(rows_two, rows_one, strict=True):
        assert ours.loss == pytest.approx(theirs.loss, rel=LOSS_RTOL)
        assert ours.learning_rate == theirs.learning_rate
    assert done_two.last_loss == pytest.approx(done_one.last_loss, rel=LOSS_RTOL)

    # The same outcome as a 1-process job: adapter + report, training.completed.
    got = trainer.stub("eve").GetJob(training_pb2.GetJobRequest(job_id=two.job_id))
    assert got.resources.processes == 2
    assert [ref.uri.rsplit("/", 2)[-2] for ref in got.artifacts] == ["adapter", "report"]
    completed = {e.job_id: e for _, e in outbox(trainer.engine, topics.TRAINING_COMPLETED)}
    event = completed[two.job_id]
    assert event.kind == common_pb2.MODEL_KIND_ADAPTER and list(event.artifacts) == list(
        got.artifacts
    )
    assert event.metrics["final_eval_loss"] == pytest.approx(
        completed[one.job_id].metrics["final_eval_loss"], rel=LOSS_RTOL
    )
    report_dir = trainer.store.download_folder(
        ArtifactRef.from_proto(event.artifacts[-1]), tmp_path / "report"
    )
    report = json.loads((report_dir / "training_report.json").read_text())
    assert report["processes"] == 2 and report["status"] == "completed"
    assert report["lineage"]["extra"]["job_id"] == two.job_id  # the worker's lineage
    assert report["lineage"]["dataset_version"] == two.dataset_version

    # Sharded checkpoints (2 ranks) in the artifact store, through rank 0's S3 store.
    checkpoints = S3CheckpointStore(trainer.store, two.job_id)
    assert checkpoints.steps() == [4, 6]
    folder = checkpoints.load(6, tmp_path / "checkpoint")
    state = json.loads((folder / "state.json").read_text())
    assert (state["format"], state["world_size"]) == ("posttrain.checkpoint.sharded.v1", 2)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = trainer.store.download_folder(
        ArtifactRef.from_proto(event.artifacts[0]), tmp_path / "adapter"
    )
    PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(trainer.inputs.base_dir), adapter
    )


def test_a_stopped_two_process_job_resumes_from_its_sharded_checkpoint(sqlite_trainer):
    trainer = sqlite_trainer
    first = trainer.start_worker("w1", max_processes=2)
    job = trainer.submit(
        hyperparameters={
            **NO_DROPOUT,
            "max_steps": "40",
            "batch_size": "1",
            "grad_accum": "4",
            "checkpoint_every": "1000",  # only the one the stop makes
        },
        resources=training_pb2.TrainingResources(processes=2),
    )
    wait_for("a few steps", lambda: trainer.job(job.job_id).step >= 2, timeout_s=180)
    first.stop()  # the worker's SIGTERM: CANCEL file, checkpoint at the next step, hand back
    handed = trainer.job(job.job_id)
    assert (handed.state, handed.worker_id, handed.attempt) == ("QUEUED", None, 1)
    assert 2 <= handed.step < 40
    assert S3CheckpointStore(trainer.store, job.job_id).latest_step() == handed.step
    trainer.workers.remove(first)

    trainer.start_worker("w2", max_processes=2)
    done = trainer.wait_state(job.job_id, "SUCCEEDED", timeout_s=300)
    assert (done.step, done.attempt, done.worker_id) == (40, 2, "w2")
    assert done.resumed_from_step == handed.step
    rows = _progress(trainer, job.job_id)
    resumed = [r.step for r in rows if r.attempt == 2]
    assert resumed == list(range(handed.step + 1, 41))  # the sharded state came back whole


def test_cancel_a_running_two_process_job(sqlite_trainer):
    trainer = sqlite_trainer
    trainer.start_worker("w1", max_processes=2)
    job = trainer.submit(
        hyperparameters={"max_steps": "5000", "batch_size": "1", "checkpoint_every": "1000"},
        resources=training_pb2.TrainingResources(processes=2),
    )
    wait_for("a few steps", lambda: trainer.job(job.job_id).step >= 2, timeout_s=180)
    trainer.stub("alice").CancelJob(training_pb2.CancelJobRequest(job_id=job.job_id))
    final = trainer.wait_state(job.job_id, "CANCELLED", timeout_s=120)
    assert 2 <= final.step < 5000
    [(_, cancelled)] = outbox(trainer.engine, topics.TRAINING_CANCELLED)
    assert (cancelled.job_id, cancelled.at_step) == (job.job_id, final.step)
    assert S3CheckpointStore(trainer.store, job.job_id).latest_step() == final.step
    assert not list(trainer.store.list_artifacts(f"models/acme/support-bot/{job.job_id}"))


@pytest.mark.parametrize(
    ("resources", "method", "field", "words"),
    [
        ({"processes": -1}, common_pb2.TUNING_METHOD_LORA, "resources.processes", "negative"),
        ({"processes": 9}, common_pb2.TUNING_METHOD_LORA, "resources.processes", "more than"),
        ({"processes": 2}, common_pb2.TUNING_METHOD_PREFIX, "resources.processes", "one process"),
        ({"nodes": 2}, common_pb2.TUNING_METHOD_LORA, "resources.nodes", "max_job_nodes"),
        ({"nodes": -1}, common_pb2.TUNING_METHOD_LORA, "resources.nodes", "negative"),
    ],
)
def test_resources_a_worker_cannot_run_are_refused(sqlite_trainer, resources, method, field, words):
    request = sqlite_trainer.request(
        method=method,
        hyperparameters={"max_steps": "2"},
        resources=training_pb2.TrainingResources(**resources),
    )
    with pytest.raises(grpc.RpcError) as raised:
        sqlite_trainer.stub("alice").SubmitJob(request)
    err = raised.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = {v.field: v.message for v in field_violations(err)}
    assert words in violations.get(field, ""), err.details()


def test_a_worker_takes_only_jobs_that_fit_its_processes(sqlite_trainer):
    trainer = sqlite_trainer
    big = trainer.submit(resources=training_pb2.TrainingResources(processes=2)).job_id
    small = trainer.submit().job_id
    with session_scope(trainer.engine) as session:

        def emit(event_type, payload, *, aggregate_id):
            add_to_outbox(session, event_type, payload, producer="t", aggregate_id=aggregate_id)

        book = JobBook(session, emit)
        claim = book.claim_next("w1", stale_after_s=30, max_processes=1)
        assert claim is not None and claim.job.job_id == small
        assert book.claim_next("w2", stale_after_s=30, max_processes=1) is None
        claim = book.claim_next("w3", stale_after_s=30, max_processes=2)
        assert claim is not None and claim.job.job_id == big


def test_a_failing_two_process_job_is_failed_with_the_rank_s_error(sqlite_trainer):
    trainer = sqlite_trainer
    trainer.start_worker("w1", max_processes=2)
    job = trainer.submit(
        hyperparameters={**FAST, "max_seq_len": "8"},  # every row too long
        resources=training_pb2.TrainingResources(processes=2),
    )
    failed = trainer.wait_state(job.job_id, "FAILED", timeout_s=180)
    assert failed.error_type == "ValueError" and "no training rows" in failed.error
    [(_, event)] = outbox(trainer.engine, topics.TRAINING_FAILED)
    assert (event.job_id, event.error_type, event.retryable) == (job.job_id, "ValueError", False)
