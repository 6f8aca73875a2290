"""Jobs through real workers: training.requested over Kafka, a tiny LoRA run, checkpoints
and artifacts in S3, progress and outcome events, WatchJob, cancel, failure, idempotence."""

from __future__ import annotations

import json

import sqlalchemy as sa
from kafka import KafkaProducer
from sqlalchemy.orm import Session
from trainer_helpers import FAST, outbox, read_topic, wait_for

from posttrain.events import ProcessedEvent, topics
from posttrain.events.envelope import decode, encode, make_envelope, unpack
from posttrain.events.tables import OutboxEvent
from posttrain.storage import MANIFEST_MEDIA_TYPE, ArtifactRef
from posttrain.trainer import S3CheckpointStore
from posttrain.v1 import common_pb2, training_pb2


def test_a_job_runs_end_to_end(trainer, tmp_path):
    trainer.start_worker("w1")
    job = trainer.submit()
    updates = list(
        trainer.stub("eve").WatchJob(training_pb2.GetJobRequest(job_id=job.job_id), timeout=120)
    )

    # WatchJob: every step once, never going back, then the final state; the stream ends.
    assert [u.step for u in updates] == sorted(u.step for u in updates)
    per_step = [u for u in updates if u.learning_rate]  # the step messages (state messages: 0)
    assert [u.step for u in per_step] == [1, 2, 3, 4, 5, 6]
    assert all(u.loss > 0 and u.tokens_per_second > 0 and u.total_steps == 6 for u in per_step)
    assert all(u.state == training_pb2.JOB_STATE_RUNNING for u in per_step)
    assert updates[-1].state == training_pb2.JOB_STATE_SUCCEEDED
    assert (updates[-1].step, updates[-1].total_steps) == (6, 6)

    done = trainer.stub("alice").GetJob(training_pb2.GetJobRequest(job_id=job.job_id))
    assert done.state == training_pb2.JOB_STATE_SUCCEEDED
    assert (done.step, done.total_steps, done.attempt, done.worker_id) == (6, 6, 1, "w1")
    kinds = [ref.uri.rsplit("/", 2)[-2] for ref in done.artifacts]
    assert kinds == ["adapter", "report"]

    # The outcome event, in the outbox and on Kafka.
    events = outbox(trainer.engine)
    assert [t for t, _ in events] == [topics.TRAINING_REQUESTED, topics.TRAINING_COMPLETED]
    completed = events[1][1]
    assert completed.job_id == job.job_id and completed.kind == common_pb2.MODEL_KIND_ADAPTER
    assert completed.method == common_pb2.TUNING_METHOD_LORA
    assert list(completed.artifacts) == list(done.artifacts)
    assert all(a.media_type == MANIFEST_MEDIA_TYPE for a in completed.artifacts)
    weights_sha = trainer.inputs.weights.sha256
    assert completed.base_model == f"tiny-llama@{weights_sha}"
    lineage = completed.lineage
    assert (lineage.dataset_version, lineage.base_model) == (
        job.dataset_version,
        completed.base_model,
    )
    assert (lineage.training_job_id, lineage.seed) == (job.job_id, 7) and lineage.code_version
    assert lineage.extra["dataset"] == "support"
    assert completed.metrics["final_loss"] > 0 and completed.metrics["final_eval_loss"] > 0
    assert (completed.output_name, completed.tenant) == ("support-bot", "acme")
    on_kafka = read_topic(
        trainer.settings.kafka.bootstrap_servers,
        topics.TRAINING_COMPLETED,
        job.job_id,
        until=lambda found: len(found) >= 1,
    )
    assert on_kafka[0] == completed

    # Progress went to Kafka directly, one event per step.
    progress = read_topic(
        trainer.settings.kafka.bootstrap_servers,
        topics.TRAINING_PROGRESS,
        job.job_id,
        until=lambda found: {p.step for p in found} >= set(range(1, 7)),
    )
    assert sorted(p.step for p in progress) == [1, 2, 3, 4, 5, 6]
    assert all(p.worker_id == "w1" and p.total_steps == 6 and p.loss > 0 for p in progress)

    # Checkpoints in S3 (every 2 steps, the last 2 kept); the adapter loads in plain PEFT.
    assert S3CheckpointStore(trainer.store, job.job_id).steps() == [4, 6]
    adapter = trainer.store.download_folder(
        ArtifactRef.from_proto(completed.artifacts[0]), tmp_path / "adapter"
    )
    report = trainer.store.download_folder(
        ArtifactRef.from_proto(completed.artifacts[-1]), tmp_path / "report"
    )
    summary = json.loads((report / "training_report.json").read_text())
    assert (
        summary["status"] == "completed"
        and summary["lineage"]["dataset_version"] == job.dataset_version
    )
    assert [h["step"] for h in summary["history"]] == [1, 2, 3, 4, 5, 6]

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(trainer.inputs.base_dir)
    model = PeftModel.from_pretrained(base, adapter)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert logits.shape[-1] == base.config.vocab_size

    # Delivered again: the same event (consumer dedupe) and a copy under a new event id
    # (the handler sees the job ended): nothing runs twice.
    _redeliver(trainer, job.job_id)
    assert trainer.job(job.job_id).attempt == 1
    assert len(outbox(trainer.engine, topics.TRAINING_COMPLETED)) == 1


def test_cancel_a_running_job(trainer):
    trainer.start_worker("w1")
    job = trainer.submit(
        hyperparameters={"max_steps": "5000", "batch_size": "2", "checkpoint_every": "1000"}
    )
    wait_for("a few steps", lambda: trainer.job(job.job_id).step >= 3, timeout_s=90)
    asked = trainer.stub("alice").CancelJob(
        training_pb2.CancelJobRequest(job_id=job.job_id, reason="wrong data")
    )
    assert asked.state == training_pb2.JOB_STATE_RUNNING  # stops at the next step boundary
    final = trainer.wait_state(job.job_id, "CANCELLED", timeout_s=60)
    assert 3 <= final.step < 5000 and final.cancelled_by == "alice"
    [(_, cancelled)] = outbox(trainer.engine, topics.TRAINING_CANCELLED)
    assert (cancelled.job_id, cancelled.cancelled_by, cancelled.at_step) == (
        job.job_id,
        "alice",
        final.step,
    )
    # The cancel point is checkpointed; nothing was published as a model.
    assert S3CheckpointStore(trainer.store, job.job_id).latest_step() == final.step
    assert not list(trainer.store.list_artifacts(f"models/acme/support-bot/{job.job_id}"))
    assert outbox(trainer.engine, topics.TRAINING_COMPLETED) == []


def test_a_failing_job_is_recorded_failed_once(trainer):
    trainer.start_worker("w1")
    job = trainer.submit(hyperparameters={**_fast(), "max_seq_len": "8"})  # every row too long
    failed = trainer.wait_state(job.job_id, "FAILED", timeout_s=90)
    assert failed.error_type == "ValueError" and "no training rows" in failed.error
    [(_, event)] = outbox(trainer.engine, topics.TRAINING_FAILED)
    assert (event.job_id, event.error_type, event.retryable) == (job.job_id, "ValueError", False)
    got = trainer.stub("eve").GetJob(training_pb2.GetJobRequest(job_id=job.job_id))
    assert got.state == training_pb2.JOB_STATE_FAILED and "no training rows" in got.error
    # Not retried: the same error would come back.
    assert failed.attempt == 1


def test_a_stopping_worker_hands_its_job_to_the_next(sqlite_trainer):
    trainer = sqlite_trainer
    first = trainer.start_worker("w1")
    job = trainer.submit(
        hyperparameters={
            **FAST,
            "max_steps": "40",
            "batch_size": "2",
            "grad_accum": "4",
            "checkpoint_every": "1000",  # only the one the stop makes
        }
    )
    wait_for("a few steps", lambda: trainer.job(job.job_id).step >= 3, timeout_s=90)
    first.stop()  # SIGTERM of a worker process: checkpoint at the next step, hand back
    handed = trainer.job(job.job_id)
    assert (handed.state, handed.worker_id, handed.attempt) == ("QUEUED", None, 1)
    assert S3CheckpointStore(trainer.store, job.job_id).latest_step() == handed.step
    trainer.workers.remove(first)

    trainer.start_worker("w2")
    done = trainer.wait_state(job.job_id, "SUCCEEDED", timeout_s=120)
    assert (done.step, done.attempt, done.worker_id) == (40, 2, "w2")
    assert done.resumed_from_step == handed.step


# ---------------------------------------------------------------- helpers


def _fast() -> dict[str, str]:
    return dict(FAST)


def _redeliver(trainer, job_id: str) -> None:
    with trainer.engine.connect() as conn:
        value = conn.execute(
            sa.select(OutboxEvent.value).where(OutboxEvent.topic == topics.TRAINING_REQUESTED)
        ).scalar_one()
    original = decode(value)
    copy = make_envelope(
        topics.TRAINING_REQUESTED, unpack(original), producer="test", aggregate_id=job_id
    )
    producer = KafkaProducer(bootstrap_servers=trainer.settings.kafka.bootstrap_servers)
    try:
        for env in (original, copy):
            key, value, headers = encode(env)
            producer.send(topics.TRAINING_REQUESTED, key=key, value=value, headers=headers).get(30)
    finally:
        producer.close()

    def handled() -> bool:
        with Session(trainer.engine) as session:
            return (
                session.get(ProcessedEvent, (trainer.settings.worker_group, copy.event_id))
                is not None
            )

    wait_for("the copy to be handled", handled, timeout_s=60)
