"""The trainer service for real: its servicer in a GrpcServer on a free port with the
standard interceptors and API keys, on SQLite and PostgreSQL; training workers consuming
training.requested from the session's Kafka broker; base model, dataset and checkpoints
in the session's S3 server. Intake and the registry are stand-ins here (FakeIntake,
FakeRegistry) except in test_trainer_upstream.py, which runs the real ones.

The base model is a tiny random Llama (SmolLM2's tokenizer cut to 1024 ids, hidden 64,
2 layers); jobs run a few LoRA steps on CPU in about a second. Torch gets one thread:
the development machines have 2 cores shared by several people.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from trainer_helpers import (
    APPROVED_VERSION,
    BASE_MODEL,
    FAST,
    PENDING_VERSION,
    REJECTED_VERSION,
    FakeIntake,
    FakeRegistry,
    chat_rows,
    dataset_version,
    jsonl,
    wait_for,
)

from posttrain.config import GrpcServerSettings, KafkaSettings
from posttrain.db import apply_migrations, create_db_engine, session_scope
from posttrain.events import add_to_outbox
from posttrain.rpc import (
    AUTH_MIGRATIONS,
    ApiKeyStore,
    GrpcServer,
    make_channel,
    standard_interceptors,
)
from posttrain.storage import ArtifactRef, ArtifactStore
from posttrain.trainer import (
    TERMINAL,
    JobBook,
    JobRequest,
    TrainingJobRow,
    WorkerOptions,
    build_job_config,
)
from posttrain.training import make_tiny_model
from posttrain.v1 import common_pb2, registry_pb2, training_pb2, training_pb2_grpc
from services.trainer.servicer import SERVICE_NAME, TrainingServicer, migrate
from services.trainer.settings import TrainerSettings
from services.trainer.workers import WorkerRuntime

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", seed=0)


@pytest.fixture(scope="module")
def store(module_store: ArtifactStore) -> ArtifactStore:
    """The module's own bucket (tests/conftest.py module_store)."""
    return module_store


@dataclass
class Inputs:
    """The base model and the dataset version, stored as intake and the registry would."""

    base_dir: Path
    weights: ArtifactRef
    manifest: ArtifactRef
    train_rows: list[dict]
    eval_rows: list[dict]


@pytest.fixture(scope="module")
def inputs(store: ArtifactStore, tiny_base: Path) -> Inputs:
    train, evals = chat_rows(48, seed=1), chat_rows(8, seed=2)
    weights = store.put_folder(tiny_base, f"base-models/{BASE_MODEL}")
    manifest = store.publish_files(
        {"train.jsonl": jsonl(train), "eval.jsonl": jsonl(evals)},
        f"datasets/acme/support/{APPROVED_VERSION}",
    )
    return Inputs(tiny_base, weights, manifest, train, evals)


def fake_upstreams(inputs: Inputs) -> tuple[FakeIntake, FakeRegistry]:
    intake = FakeIntake()
    for version, state in (
        (APPROVED_VERSION, common_pb2.APPROVAL_STATE_APPROVED),
        (PENDING_VERSION, common_pb2.APPROVAL_STATE_PENDING),
        (REJECTED_VERSION, common_pb2.APPROVAL_STATE_REJECTED),
    ):
        intake.versions[("support", version)] = dataset_version(
            "support", version, state, inputs.manifest.to_proto()
        )
    registry = FakeRegistry()
    registry.models[BASE_MODEL] = registry_pb2.BaseModel(
        name=BASE_MODEL, weights=inputs.weights.to_proto()
    )
    return intake, registry


@dataclass
class TrainerEnv:
    engine: Engine
    server: GrpcServer
    settings: TrainerSettings
    keys: dict[str, str]
    intake: FakeIntake
    registry: FakeRegistry
    store: ArtifactStore
    inputs: Inputs
    tmp: Path
    servicer: TrainingServicer
    key_store: ApiKeyStore
    channels: list = field(default_factory=list)
    workers: list[WorkerRuntime] = field(default_factory=list)

    def stub(self, who: str) -> training_pb2_grpc.TrainingServiceStub:
        channel = make_channel(self.server.address, api_key=self.keys[who])
        self.channels.append(channel)
        return training_pb2_grpc.TrainingServiceStub(channel)

    def request(self, **overrides) -> training_pb2.SubmitJobRequest:
        values = dict(
            base_model=BASE_MODEL,
            dataset="support",
            dataset_version=APPROVED_VERSION,
            method=common_pb2.TUNING_METHOD_LORA,
            hyperparameters=FAST,
            output_name="support-bot",
        )
        values.update(overrides)
        return training_pb2.SubmitJobRequest(**values)

    def submit(self, who: str = "alice", **overrides) -> training_pb2.TrainingJob:
        return self.stub(who).SubmitJob(self.request(**overrides))

    def submit_with_id(self, job_id: str, hyperparameters: dict[str, str] | None = None) -> None:
        """A job recorded straight through JobBook under a chosen id (its Kafka key)."""
        config = build_job_config("lora", hyperparameters or FAST)
        request = JobRequest(
            tenant="acme",
            base_model=BASE_MODEL,
            base_weights=self.inputs.weights,
            dataset="support",
            dataset_version=APPROVED_VERSION,
            dataset_manifest=self.inputs.manifest,
            method="lora",
            config_yaml=config.to_yaml(),
            output_name="support-bot",
            submitted_by="alice",
        )
        with session_scope(self.engine) as session:

            def emit(event_type, payload, *, aggregate_id):
                add_to_outbox(
                    session, event_type, payload, producer="test", aggregate_id=aggregate_id
                )

            JobBook(session, emit).submit(request, job_id=job_id)

    def job(self, job_id: str) -> TrainingJobRow:
        with Session(self.engine) as session:
            row = session.get(TrainingJobRow, job_id)
            assert row is not None
            return row

    def wait_state(self, job_id: str, *states: str, timeout_s: float = 120.0) -> TrainingJobRow:
        """The job once it is in one of `states`; fails at once if it ends otherwise."""
        ended = (*states, *TERMINAL)
        wait_for(f"job {job_id} in {states}", lambda: self.job(job_id).state in ended, timeout_s)
        job = self.job(job_id)
        assert job.state in states, f"job {job_id} is {job.state}: {job.error}"
        return job

    def start_worker(self, name: str, max_processes: int = 1, **options: object) -> WorkerRuntime:
        """A training worker in this process, once its producer and relay are up; it takes
        jobs of up to `max_processes` processes (CPU processes over gloo here). `options`:
        more WorkerOptions (shared_dir for multi-node jobs...)."""
        options = WorkerOptions(
            worker_id=name,
            cache_dir=self.tmp / "cache",
            work_dir=self.tmp / name,
            heartbeat_interval_s=0.5,
            stale_after_s=3.0,
            scan_interval_s=0.3,
            max_processes=max_processes,
            **options,
        )
        runtime = WorkerRuntime(self.settings, self.engine, store=self.store, options=options)
        self.workers.append(runtime.start())
        assert runtime.events.ready.wait(60), f"worker {name}: no Kafka producer after 60s"
        return runtime


@pytest.fixture
def trainer(db_url: str, stack, store: ArtifactStore, inputs: Inputs, tmp_path: Path):
    yield from _trainer_env(db_url, stack, store, inputs, tmp_path)


def _trainer_env(db_url, stack, store, inputs, tmp_path) -> Iterator[TrainerEnv]:
    engine = create_db_engine(db_url)
    migrate(engine)
    apply_migrations(engine, "auth", AUTH_MIGRATIONS)
    key_store = ApiKeyStore(engine)
    keys = {
        "alice": key_store.create_key("alice", ["trainer"], "acme"),
        "eve": key_store.create_key("eve", ["viewer"], "acme"),
        "uma": key_store.create_key("uma", ["uploader"], "acme"),
        "mallory": key_store.create_key("mallory", ["trainer"], "globex"),
        "root": key_store.create_key("root", ["admin"], "acme"),
    }
    settings = TrainerSettings(
        state_dir=str(tmp_path),
        kafka=KafkaSettings(bootstrap_servers=stack.kafka_bootstrap),
        s3=stack.s3_settings(bucket=store.bucket),  # what a job's launched processes use
        worker_group=f"trainer-test-{uuid.uuid4().hex[:8]}",
        watch_poll_s=0.05,
    )
    intake, registry = fake_upstreams(inputs)
    servicer = TrainingServicer(settings, engine, intake, registry)
    server = GrpcServer(
        GrpcServerSettings(port=0, grace_seconds=0),
        [(training_pb2_grpc.add_TrainingServiceServicer_to_server, servicer)],
        service_names=[SERVICE_NAME],
        interceptors=standard_interceptors(key_store),
        port=0,
        host="127.0.0.1",
    )
    server.start()
    env = TrainerEnv(
        engine,
        server,
        settings,
        keys,
        intake,
        registry,
        store,
        inputs,
        tmp_path,
        servicer,
        key_store,
    )
    try:
        yield env
    finally:
        for worker in env.workers:
            worker.stop()
        for channel in env.channels:
            channel.close()
        server.stop(grace=0)
        engine.dispose()


@pytest.fixture
def sqlite_trainer(stack, store: ArtifactStore, inputs: Inputs, tmp_path: Path):
    """The trainer on SQLite only: for the tests whose subject is not the database."""
    yield from _trainer_env(
        f"sqlite:///{tmp_path / 'trainer.sqlite3'}", stack, store, inputs, tmp_path
    )
