"""SubmitJob through the real intake and registry services (in-process gRPC servers that
share the trainer's api_keys table), a job run on what they stored, and the registry
core accepting the trainer's training.completed."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from sqlalchemy.orm import Session
from trainer_helpers import chat_row_bytes, outbox, rpc_error

from posttrain.config import GrpcServerSettings
from posttrain.db import apply_migrations, create_db_engine
from posttrain.events import EVENTS_MIGRATIONS, topics
from posttrain.intake import INTAKE_MIGRATIONS, DatasetCatalog
from posttrain.registry import REGISTRY_MIGRATIONS, versions
from posttrain.rpc import GrpcServer, make_channel, standard_interceptors
from posttrain.v1 import (
    common_pb2,
    intake_pb2,
    intake_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    training_pb2,
)
from services.intake.servicer import SERVICE_NAME as INTAKE_SERVICE
from services.intake.servicer import IntakeServicer
from services.intake.settings import IntakeSettings
from services.registry.servicer import SERVICE_NAME as REGISTRY_SERVICE
from services.registry.servicer import RegistryServicer
from services.registry.settings import RegistrySettings
from services.trainer.lookups import GrpcBaseModelLookup, GrpcDatasetLookup


@dataclass
class Upstreams:
    intake: GrpcServer
    registry: GrpcServer
    registry_engine: object
    keys: dict[str, str]

    def intake_stub(self, key: str) -> intake_pb2_grpc.IntakeServiceStub:
        return intake_pb2_grpc.IntakeServiceStub(make_channel(self.intake.address, api_key=key))

    def registry_stub(self, key: str) -> registry_pb2_grpc.RegistryServiceStub:
        return registry_pb2_grpc.RegistryServiceStub(
            make_channel(self.registry.address, api_key=key)
        )


@pytest.fixture
def upstreams(sqlite_trainer, tmp_path) -> Iterator[Upstreams]:
    trainer = sqlite_trainer
    intake_engine = create_db_engine(f"sqlite:///{tmp_path / 'intake.sqlite3'}")
    apply_migrations(intake_engine, "events", EVENTS_MIGRATIONS)
    apply_migrations(intake_engine, "intake", INTAKE_MIGRATIONS)
    registry_engine = create_db_engine(f"sqlite:///{tmp_path / 'registry.sqlite3'}")
    apply_migrations(registry_engine, "events", EVENTS_MIGRATIONS)
    apply_migrations(registry_engine, "registry", REGISTRY_MIGRATIONS)
    interceptors = standard_interceptors(trainer.key_store)  # one api_keys table for all
    intake = GrpcServer(
        GrpcServerSettings(port=0, grace_seconds=0),
        [
            (
                intake_pb2_grpc.add_IntakeServiceServicer_to_server,
                IntakeServicer(
                    IntakeSettings(state_dir=str(tmp_path)),
                    intake_engine,
                    DatasetCatalog(trainer.store, spool_dir=str(tmp_path / "spool")),
                ),
            )
        ],
        service_names=[INTAKE_SERVICE],
        interceptors=interceptors,
        port=0,
        host="127.0.0.1",
    )
    registry = GrpcServer(
        GrpcServerSettings(port=0, grace_seconds=0),
        [
            (
                registry_pb2_grpc.add_RegistryServiceServicer_to_server,
                RegistryServicer(RegistrySettings(), registry_engine, trainer.store),
            )
        ],
        service_names=[REGISTRY_SERVICE],
        interceptors=interceptors,
        port=0,
        host="127.0.0.1",
    )
    intake.start()
    registry.start()
    trainer.servicer.datasets = GrpcDatasetLookup(intake.address)
    trainer.servicer.base_models = GrpcBaseModelLookup(registry.address)
    keys = {
        "ursula": trainer.key_store.create_key("ursula", ["uploader", "trainer"], "acme"),
        "bob": trainer.key_store.create_key("bob", ["approver"], "acme"),
    }
    trainer.keys.update(keys)
    try:
        yield Upstreams(intake, registry, registry_engine, keys)
    finally:
        intake.stop(grace=0)
        registry.stop(grace=0)
        intake_engine.dispose()
        registry_engine.dispose()


def _upload(upstreams, name: str, *, regulated: bool) -> intake_pb2.DatasetVersion:
    def requests():
        yield intake_pb2.UploadDatasetRequest(
            metadata=intake_pb2.UploadMetadata(
                dataset=name,
                format=intake_pb2.DATA_FORMAT_JSONL,
                schema=intake_pb2.ROW_SCHEMA_CHAT,
                regulated=regulated,
            )
        )
        yield intake_pb2.UploadDatasetRequest(chunk=chat_row_bytes(40, seed=5))

    return upstreams.intake_stub(upstreams.keys["ursula"]).UploadDataset(requests()).version


def test_submit_asks_the_real_intake_and_registry_and_the_job_runs(sqlite_trainer, upstreams):
    trainer = sqlite_trainer
    base = upstreams.registry_stub(upstreams.keys["ursula"]).RegisterBaseModel(
        registry_pb2.RegisterBaseModelRequest(
            name="tiny-llama", source_uri=trainer.inputs.weights.uri
        )
    )
    approved = _upload(upstreams, "support", regulated=False)
    assert approved.state == common_pb2.APPROVAL_STATE_APPROVED
    pending = _upload(upstreams, "claims", regulated=True)
    assert pending.state == common_pb2.APPROVAL_STATE_PENDING

    def submit(who: str = "ursula", **overrides):
        values = dict(dataset="support", dataset_version=approved.version)
        values.update(overrides)
        return trainer.submit(who=who, **values)

    # Refusals, each named by the service that knows.
    err = rpc_error(lambda: submit(dataset="claims", dataset_version=pending.version))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "PENDING" in err.details()
    err = rpc_error(lambda: submit(base_model="no-such-base"))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "no-such-base" in err.details()
    # Another tenant's dataset does not exist for mallory: intake saw her key, not ours.
    err = rpc_error(lambda: submit(who="mallory"))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "dataset version" in err.details()

    trainer.start_worker("w1")
    job = submit()
    assert job.state == training_pb2.JOB_STATE_QUEUED
    row = trainer.job(job.job_id)
    assert (row.base_weights_sha256, row.base_weights_uri) == (
        base.weights.sha256,
        base.weights.uri,
    )
    assert row.dataset_manifest_sha256 == approved.manifest.sha256
    done = trainer.wait_state(job.job_id, "SUCCEEDED", timeout_s=120)
    assert done.step == 6

    # The registry's core takes the trainer's training.completed as it is.
    [(_, completed)] = outbox(trainer.engine, topics.TRAINING_COMPLETED)
    staged = []
    with Session(upstreams.registry_engine) as session, session.begin():
        version, created = versions.register_from_training(
            session,
            completed,
            produced_by="trainer",
            emit=lambda t, p, *, aggregate_id: staged.append((t, p)),
        )
        assert created and version.id == "support-bot:v1" and version.kind == "adapter"
        assert version.base_model_sha256 == base.weights.sha256
    assert [t for t, _ in staged] == [topics.MODEL_REGISTERED]


def test_an_unreachable_intake_is_unavailable(sqlite_trainer):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sqlite_trainer.servicer.datasets = GrpcDatasetLookup(f"127.0.0.1:{port}", timeout_s=2)
    err = rpc_error(lambda: sqlite_trainer.submit())
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "intake" in err.details()
