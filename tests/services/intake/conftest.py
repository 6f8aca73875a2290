"""An intake service in-process on a free port, over the session's real S3 and a DB per
backend, with API keys for the roles the tests need."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from posttrain.config import GrpcServerSettings
from posttrain.db import apply_migrations, create_db_engine
from posttrain.events import EVENTS_MIGRATIONS, OutboxEvent, decode
from posttrain.intake import INTAKE_MIGRATIONS, DatasetCatalog
from posttrain.rpc import (
    AUTH_MIGRATIONS,
    ApiKeyStore,
    GrpcServer,
    make_channel,
    standard_interceptors,
)
from posttrain.storage import ArtifactStore
from posttrain.v1 import intake_pb2, intake_pb2_grpc
from services.intake.servicer import SERVICE_NAME, IntakeServicer
from services.intake.settings import IntakeSettings


def chat_row(question: str, answer: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


SAMPLE_ROWS = [
    chat_row(f"What is the status of order {i}?", f"Order {i} ships tomorrow.") for i in range(12)
]


class FakeBaseModels:
    """Stands in for the registry's GetBaseModel: name -> folder manifest ref."""

    def __init__(self) -> None:
        self.refs: dict = {}

    def __call__(self, name: str, credentials):
        from posttrain.rpc.errors import NotFound

        if name not in self.refs:
            raise NotFound("base model", name)
        return self.refs[name]


@dataclass
class IntakeEnv:
    engine: sa.Engine
    store: ArtifactStore
    catalog: DatasetCatalog
    keys: dict[str, str]
    server: GrpcServer
    channels: list
    base_models: FakeBaseModels

    def stub(self, who: str) -> intake_pb2_grpc.IntakeServiceStub:
        channel = make_channel(self.server.address, api_key=self.keys[who])
        self.channels.append(channel)
        return intake_pb2_grpc.IntakeServiceStub(channel)

    def outbox(self) -> list[tuple[str, object]]:
        """(topic, envelope) of every staged event, oldest first."""
        with Session(self.engine) as session:
            rows = session.scalars(sa.select(OutboxEvent).order_by(OutboxEvent.id)).all()
            return [(r.topic, decode(r.value)) for r in rows]

    def dataset_objects(self) -> list[str]:
        return [o.key for o in self.store.list_objects("datasets/")]


def upload_requests(
    name: str,
    data: bytes,
    *,
    fmt=intake_pb2.DATA_FORMAT_JSONL,
    schema=intake_pb2.ROW_SCHEMA_CHAT,
    regulated: bool = False,
    policy=intake_pb2.INVALID_ROW_POLICY_UNSPECIFIED,
    chunk: int = 4096,
) -> Iterator[intake_pb2.UploadDatasetRequest]:
    yield intake_pb2.UploadDatasetRequest(
        metadata=intake_pb2.UploadMetadata(
            dataset=name, format=fmt, schema=schema, regulated=regulated, invalid_rows=policy
        )
    )
    for start in range(0, len(data), chunk):
        yield intake_pb2.UploadDatasetRequest(chunk=data[start : start + chunk])


@pytest.fixture
def intake(db_url: str, s3_settings, tmp_path: Path) -> Iterator[IntakeEnv]:
    engine = create_db_engine(db_url)
    for component, migrations in (
        ("auth", AUTH_MIGRATIONS),
        ("events", EVENTS_MIGRATIONS),
        ("intake", INTAKE_MIGRATIONS),
    ):
        apply_migrations(engine, component, migrations)
    store = ArtifactStore.from_settings(s3_settings)
    store.ensure_bucket()
    catalog = DatasetCatalog(store, spool_dir=str(tmp_path / "spool"))
    key_store = ApiKeyStore(engine)
    keys = {
        "alice": key_store.create_key("alice", ["uploader"], "acme"),
        "bob": key_store.create_key("bob", ["approver"], "acme"),
        "carol": key_store.create_key("carol", ["uploader", "approver"], "acme"),
        "eve": key_store.create_key("eve", ["viewer"], "acme"),
        "mallory": key_store.create_key("mallory", ["uploader", "approver"], "globex"),
    }
    settings = IntakeSettings(state_dir=str(tmp_path))
    base_models = FakeBaseModels()
    server = GrpcServer(
        GrpcServerSettings(port=0),
        [
            (
                intake_pb2_grpc.add_IntakeServiceServicer_to_server,
                IntakeServicer(settings, engine, catalog, base_model_weights=base_models),
            )
        ],
        service_names=[SERVICE_NAME],
        interceptors=standard_interceptors(key_store),
        port=0,
    )
    server.start()
    env = IntakeEnv(engine, store, catalog, keys, server, [], base_models)
    try:
        yield env
    finally:
        for channel in env.channels:
            channel.close()
        server.stop(grace=0)
        engine.dispose()


def rpc_error(call) -> grpc.RpcError:
    try:
        call()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded but an error was expected")
