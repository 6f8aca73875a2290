"""One change through the whole pipeline with a fault at every step: kill -9 intake
mid-upload, crash it after its DB commit, restart the broker, kill -9 the trainer
mid-training, crash the registry after its handler committed but before the Kafka offset
and then between a publish and its mark, restart S3, crash the evaluator mid-evaluation,
the gateway mid-deployment and then between its commit and the publish. After each, the process is started again with the same
environment, and the flow must end with exactly one dataset version, job result, model
version, report and deployment.

The tests run in file order and share the flow (`pipeline.flow`): each step needs the
one before (a later one skips when an earlier one failed). The table of faults is
printed at the end of the run (conftest.pytest_terminal_summary).
"""

from __future__ import annotations

import json
import random
import sqlite3
import time

import grpc
import pytest
from faults_helpers import BASE_MODEL, TENANT, Pipeline, wait_for
from kafka import KafkaConsumer, TopicPartition

from posttrain.events import envelope as envelopes
from posttrain.events import topics
from posttrain.storage import ArtifactRef
from posttrain.v1 import (
    common_pb2,
    evaluation_pb2,
    evaluation_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    intake_pb2,
    intake_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

DATASET = "faults-support"
MODEL_NAME = "faults-bot"
USE_CASE = "faults"
CHUNK = 4096
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
TRAIN = {
    "max_steps": "40",
    "batch_size": "2",
    "lr": "5e-3",
    "rank": "4",
    "alpha": "8",
    "checkpoint_every": "4",
    "max_seq_len": "256",
    "seed": "7",
}


def dataset_bytes(rows: int = 1500) -> bytes:
    """Reverse-the-words chats, ~200 kB: many chunks, so a kill lands mid-stream."""
    rng = random.Random(5)
    out = []
    for i in range(rows):
        words = rng.sample(WORDS, 2 + i % 5) + [f"w{i}"]
        out.append(
            {
                "messages": [
                    {"role": "user", "content": "Reverse: " + " ".join(words)},
                    {"role": "assistant", "content": " ".join(reversed(words))},
                ]
            }
        )
    return b"".join(json.dumps(r).encode() + b"\n" for r in out)


def upload_requests(data: bytes, on_chunk=None):
    yield intake_pb2.UploadDatasetRequest(
        metadata=intake_pb2.UploadMetadata(
            dataset=DATASET,
            format=intake_pb2.DATA_FORMAT_JSONL,
            schema=intake_pb2.ROW_SCHEMA_CHAT,
            description="fault-injection flow",
        )
    )
    for n, start in enumerate(range(0, len(data), CHUNK)):
        if on_chunk is not None:
            on_chunk(n)
        yield intake_pb2.UploadDatasetRequest(chunk=data[start : start + CHUNK])


def versions(pipe: Pipeline) -> list:
    stub = intake_pb2_grpc.IntakeServiceStub(pipe.channel("intake", "alice"))
    try:
        return list(stub.ListVersions(intake_pb2.ListVersionsRequest(dataset=DATASET)).versions)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return []
        raise


def rows(pipe: Pipeline, service: str, sql: str, *args) -> list[tuple]:
    """Rows of a service's own SQLite database (<state>/<service>/<service>.sqlite3)."""
    path = pipe.state_dir / service / f"{service}.sqlite3"
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, args).fetchall()


def events_on(pipe: Pipeline, topic: str, aggregate_id: str = "") -> list[str]:
    """Event ids on `topic` (every partition, from the start), optionally of one aggregate:
    a repeated id is a duplicate delivery (harmless: consumers dedupe by id)."""
    consumer = KafkaConsumer(bootstrap_servers=pipe.stack.kafka_bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        found, idle_since = [], time.monotonic()
        while time.monotonic() - idle_since < 2.0:
            batch = consumer.poll(timeout_ms=500)
            for records in batch.values():
                idle_since = time.monotonic()
                for record in records:
                    env = envelopes.decode(record.value)
                    if not aggregate_id or env.aggregate_id == aggregate_id:
                        found.append(env.event_id)
        return found
    finally:
        consumer.close()


def needs(pipe: Pipeline, *keys: str) -> None:
    missing = [k for k in keys if k not in pipe.flow]
    if missing:
        pytest.skip(f"an earlier step of the flow failed: no {missing}")


# ---------------------------------------------------------------- intake


def test_intake_killed_mid_upload_then_crashed_after_commit(pipeline: Pipeline):
    pipe = pipeline
    data = dataset_bytes()
    chunks = -(-len(data) // CHUNK)
    assert chunks >= 20
    stub = intake_pb2_grpc.IntakeServiceStub(pipe.channel("intake", "alice"))

    # 1. kill -9 while the stream is half sent.
    def kill_half_way(n: int) -> None:
        if n == chunks // 2:
            pipe.services.kill9("intake")

    with pytest.raises(grpc.RpcError) as killed:
        stub.UploadDataset(upload_requests(data, kill_half_way), timeout=60)
    assert killed.value.code() == grpc.StatusCode.UNAVAILABLE, killed.value.details()
    # The reset reaches the client while the kill (in gRPC's request thread) still reaps.
    assert pipe.services.wait_exit("intake", 30) == -9, (
        f"the upload failed before the kill: {killed.value.details()}"
    )
    pipe.restart("intake")
    left = versions(pipe)
    spool = [p for p in (pipe.state_dir / "intake" / "spool").glob("**/*") if p.is_file()]
    objects = list(pipe.store.client.list_objects(pipe.store.bucket, "datasets/", recursive=True))
    pipe.table.add(
        "kill -9 mid-upload",
        "intake, UploadDataset stream half sent",
        survived=not left and not objects and not spool,
        losses=f"{len(left)} versions, {len(objects)} objects, {len(spool)} spool files left",
    )
    assert not left and not objects, "a killed upload left a version or objects behind"
    assert not spool, f"the killed upload's spool files stayed: {spool}"

    # 2. The client sends it again: intake commits, then dies before it answers
    # (crash point intake.upload.after_commit); the client retries once it is back.
    with pytest.raises(grpc.RpcError) as crashed:
        stub.UploadDataset(upload_requests(data), timeout=120)
    assert crashed.value.code() == grpc.StatusCode.UNAVAILABLE, crashed.value.details()
    assert pipe.crashed_at("intake", "intake.upload.after_commit")
    pipe.restart("intake")
    answer = stub.UploadDataset(upload_requests(data), timeout=120)
    assert answer.already_existed, "the retry made a second version"
    version = answer.version.version
    assert answer.version.state == common_pb2.APPROVAL_STATE_APPROVED
    found = versions(pipe)
    db_versions = rows(pipe, "intake", "SELECT version FROM intake_dataset_versions")
    approved = wait_for(
        "dataset.approved of the version on Kafka",
        lambda: events_on(pipe, topics.DATASET_APPROVED),
        60,
    )
    pipe.table.add(
        "crash after DB commit, before answer/event",
        "intake, intake.upload.after_commit",
        survived=len(found) == 1 and len(db_versions) == 1 and len(set(approved)) == 1,
        duplicates=f"{len(found) - 1} versions, {len(approved) - len(set(approved))} events",
        losses="0" if approved else "dataset.approved lost",
    )
    assert [v.version for v in found] == [version]
    assert len(db_versions) == 1
    assert len(set(approved)) == 1, f"dataset.approved event ids: {approved}"
    pipe.flow["dataset_version"] = version


# ---------------------------------------------------------------- broker, trainer


def test_broker_restart_then_kill_9_mid_training(pipeline: Pipeline):
    pipe = pipeline
    needs(pipe, "dataset_version")
    # The broker goes away and comes back on the same port (memory storage: empty).
    pipe.stack.restart("kafka")
    trainer = training_pb2_grpc.TrainingServiceStub(pipe.channel("trainer", "ops"))
    job = trainer.SubmitJob(
        training_pb2.SubmitJobRequest(
            base_model=BASE_MODEL,
            dataset=DATASET,
            dataset_version=pipe.flow["dataset_version"],
            method=common_pb2.TUNING_METHOD_LORA,
            hyperparameters=TRAIN,
            output_name=MODEL_NAME,
        ),
        timeout=60,
    )

    def get():
        return trainer.GetJob(training_pb2.GetJobRequest(job_id=job.job_id), timeout=10)

    # Past its first checkpoint (every 4 steps): the restart resumes from there.
    wait_for("the job to make progress", lambda: get().step >= 6, 300, every_s=0.1)
    running = get()
    pipe.services.kill9("trainer")
    assert running.state == training_pb2.JOB_STATE_RUNNING and running.step < 40, (
        f"the job was {training_pb2.JobState.Name(running.state)} at step {running.step} "
        "when the worker was killed: make it longer"
    )
    pipe.restart("trainer")
    ended = (
        training_pb2.JOB_STATE_SUCCEEDED,
        training_pb2.JOB_STATE_FAILED,
        training_pb2.JOB_STATE_CANCELLED,
    )
    done = wait_for("the job to end", lambda: (j := get()).state in ended and j, 400)
    jobs = rows(pipe, "trainer", "SELECT job_id, state, resumed_from_step FROM training_jobs")
    requested = wait_for(
        "training.requested on Kafka",
        lambda: events_on(pipe, topics.TRAINING_REQUESTED, job.job_id),
        120,
    )
    completed = wait_for(
        "training.completed on Kafka",
        lambda: events_on(pipe, topics.TRAINING_COMPLETED, job.job_id),
        120,
    )
    pipe.table.add(
        "broker restart (Tansu, same port)",
        "before SubmitJob; every service reconnects",
        survived=bool(requested) and bool(completed),
        losses="0" if requested and completed else "events lost",
    )
    pipe.table.add(
        "kill -9 mid-training",
        f"trainer (API + worker) at step {running.step}/40",
        survived=done.state == training_pb2.JOB_STATE_SUCCEEDED and len(set(completed)) == 1,
        duplicates=f"{len(jobs) - 1} jobs, {len(set(completed)) - 1} results",
        losses="0" if done.state == training_pb2.JOB_STATE_SUCCEEDED else done.error,
    )
    assert done.state == training_pb2.JOB_STATE_SUCCEEDED, done.error
    assert done.step == 40 and done.attempt == 2
    assert [j[:2] for j in jobs] == [(job.job_id, "SUCCEEDED")] and jobs[0][2] >= 4, jobs
    assert len(set(completed)) == 1, f"training.completed event ids: {completed}"
    pipe.flow["job_id"] = job.job_id


# ---------------------------------------------------------------- registry, S3, evaluator


def test_registry_crash_before_offset_commit_s3_restart_evaluator_crash(pipeline: Pipeline):
    pipe = pipeline
    needs(pipe, "job_id")
    # The registry handled training.completed (version + model.registered committed) and
    # died before committing the Kafka offset: the event comes again after the restart.
    assert pipe.crashed_at("registry", "consumer.after_db_commit", timeout_s=120)
    pipe.services.restart("registry")  # not waiting for health: it dies again at start
    # Back, it skips the redelivered event, publishes model.registered and dies before
    # marking it published (outbox.after_publish): the event goes out twice.
    assert pipe.crashed_at("registry", "outbox.after_publish", timeout_s=120)
    pipe.restart("registry")
    registry = registry_pb2_grpc.RegistryServiceStub(pipe.channel("registry", "ops"))

    def model_versions():
        return list(
            registry.ListModelVersions(
                registry_pb2.ListModelVersionsRequest(name=MODEL_NAME), timeout=10
            ).versions
        )

    found = wait_for("the model version", model_versions, 60)
    # The evaluator evaluates the version and dies before recording its report.
    assert pipe.crashed_at("evaluator", "evaluator.mid_evaluation", timeout_s=300)
    # S3 goes away and comes back (same port and data) while the evaluator is down.
    pipe.stack.restart("s3")
    pipe.restart("evaluator")
    evaluator = evaluation_pb2_grpc.EvaluationServiceStub(pipe.channel("evaluator", "ops"))
    version_id = found[0].id

    def reports():
        return list(
            evaluator.ListReports(
                evaluation_pb2.ListReportsRequest(model_version_id=version_id), timeout=10
            ).reports
        )

    report = wait_for("the evaluation report", reports, 400)[0]
    verdict = wait_for(
        "the registry to record the gate verdict",
        lambda: (
            registry.GetModelVersion(
                registry_pb2.GetModelVersionRequest(id=version_id), timeout=10
            ).gate_verdict
        ),
        120,
    )
    found = model_versions()
    db_versions = rows(pipe, "registry", "SELECT id FROM registry_model_versions")
    registered = events_on(pipe, topics.MODEL_REGISTERED, version_id)
    db_reports = rows(
        pipe, "evaluator", "SELECT id FROM evaluator_reports WHERE model_version_id = ?", version_id
    )
    pipe.table.add(
        "crash after DB commit, before offset commit",
        "registry, consumer.after_db_commit (training.completed)",
        survived=len(found) == 1 and len(db_versions) == 1 and len(set(registered)) == 1,
        duplicates=f"{len(db_versions) - 1} versions",
        losses="0" if registered else "model.registered lost",
    )
    pipe.table.add(
        "crash after publish, before mark",
        "registry relay, outbox.after_publish (model.registered)",
        survived=len(db_reports) == 1,
        duplicates=f"{len(registered) - len(set(registered))} redelivered, "
        f"{len(db_reports) - 1} reports",
    )
    pipe.table.add(
        "crash mid-evaluation",
        "evaluator, evaluator.mid_evaluation (evaluated, not recorded)",
        survived=len(reports()) == 1 and len(db_reports) == 1 and bool(verdict),
        duplicates=f"{len(db_reports) - 1} reports",
        losses="0" if verdict else "verdict not recorded",
    )
    # Every file of the version's artifacts is still there after the S3 restart.
    files = [
        pipe.store.file_ref(entry)
        for artifact in found[0].artifacts
        for entry in pipe.store.get_manifest(ArtifactRef.from_proto(artifact)).files
    ]
    missing = [f.uri for f in files if not pipe.store.exists(f)]
    pipe.table.add(
        "S3 restart (SeaweedFS, same port and data)",
        "between evaluation attempts",
        survived=bool(report.id) and bool(files) and not missing,
        losses=f"{len(missing)} of {len(files)} artifact files",
    )
    assert [v.id for v in found] == [version_id] and len(db_versions) == 1
    assert len(set(registered)) == 1 and len(registered) >= 2, registered
    assert [r[0] for r in db_reports] == [report.id]
    assert files and not missing, missing
    pipe.flow["model_version_id"] = version_id


# ---------------------------------------------------------------- gateway


def test_gateway_crash_mid_deployment(pipeline: Pipeline):
    pipe = pipeline
    needs(pipe, "model_version_id")
    version_id = pipe.flow["model_version_id"]
    registry = registry_pb2_grpc.RegistryServiceStub(pipe.channel("registry", "ops"))
    registry.Promote(
        registry_pb2.PromoteRequest(
            model_version_id=version_id,
            use_case=USE_CASE,
            tenant=TENANT,
            stage=registry_pb2.STAGE_PRODUCTION,
            # A 40-step random model does not pass a release gate; the override is audited.
            override_gate=True,
            reason="fault-injection suite: tiny random model",
        ),
        timeout=30,
    )
    assert pipe.crashed_at("gateway", "gateway.mid_deployment", timeout_s=300)
    pipe.services.restart("gateway")  # not waiting for health: it may die again at start
    # Back, it deploys again and commits; its relay dies before publishing
    # deployment.completed (outbox.before_publish): the event waits in the outbox.
    assert pipe.crashed_at("gateway", "outbox.before_publish", timeout_s=300)
    pipe.restart("gateway")
    gateway = gateway_pb2_grpc.InferenceGatewayStub(pipe.channel("gateway", "ops"))

    def deployments():
        return list(
            gateway.ListDeployments(
                gateway_pb2.ListDeploymentsRequest(use_case=USE_CASE), timeout=10
            ).deployments
        )

    deployed = wait_for("the deployment", deployments, 300)
    db_rows = rows(pipe, "gateway", "SELECT id, status FROM gateway_deployments")
    completed = wait_for(
        "deployment.completed on Kafka",
        lambda: events_on(pipe, topics.DEPLOYMENT_COMPLETED),
        60,
    )
    recorded = wait_for(
        "the registry to record the deployment",
        lambda: rows(pipe, "registry", "SELECT id FROM registry_deployments WHERE status = 'live'"),
        60,
    )
    answer = gateway_pb2_grpc.InferenceGatewayStub(pipe.channel("gateway", "admin")).Generate(
        gateway_pb2.GenerateRequest(
            use_case=USE_CASE,
            prompt="Reverse: alpha bravo",
            sampling=gateway_pb2.SamplingParams(max_tokens=4),
        ),
        timeout=120,
    )
    pipe.table.add(
        "crash mid-deployment",
        "gateway, gateway.mid_deployment (model in Triton, nothing recorded)",
        survived=len(deployed) == 1 and deployed[0].live and len(db_rows) == 1,
        duplicates=f"{len(db_rows) - 1} deployments, {len(completed) - len(set(completed))} events",
        losses="0" if deployed and deployed[0].live else "not live",
    )
    pipe.table.add(
        "crash after DB commit, before publish",
        "gateway relay, outbox.before_publish (deployment.completed)",
        survived=len(set(completed)) == 1 and len(recorded) == 1,
        duplicates=f"{len(completed) - len(set(completed))} events",
        losses="0" if recorded else "deployment.completed lost",
    )
    assert len(deployed) == 1 and deployed[0].live, deployed
    assert deployed[0].model_version_id == version_id
    assert len(db_rows) == 1 and len(set(completed)) == 1
    assert answer.deployment_id == deployed[0].id and answer.text is not None
