"""Every gRPC service of the pipeline at once, as production registers them: intake,
registry, trainer (with comparisons), evaluator and gateway, each through its own
`register(settings, engine)` on its own SQLite database, in one GrpcServer with the
standard interceptors and one API key table. S3 and Kafka are the session's; the
upstream targets (trainer -> intake and registry, evaluator -> registry) point at this
same server; Triton is not running, so the gateway's inference answers UNAVAILABLE.

Used by the robustness tests (hostile input, the role matrix): they need every method
reachable, not any model.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from s3_buckets import remove_bucket
from sqlalchemy import Engine

from posttrain.config import GrpcServerSettings, KafkaSettings, S3Settings, TritonSettings
from posttrain.db import apply_migrations, create_db_engine
from posttrain.rpc import AUTH_MIGRATIONS, ApiKeyStore, GrpcServer, standard_interceptors
from posttrain.storage import ArtifactStore
from posttrain.v1 import (
    comparison_pb2,
    evaluation_pb2,
    gateway_pb2,
    intake_pb2,
    registry_pb2,
    training_pb2,
)
from services.evaluator import servicer as evaluator_service
from services.evaluator.settings import EvaluatorSettings
from services.gateway import servicer as gateway_service
from services.gateway.settings import GatewaySettings
from services.intake import servicer as intake_service
from services.intake.settings import IntakeSettings
from services.registry import servicer as registry_service
from services.registry.settings import RegistrySettings
from services.trainer import comparisons
from services.trainer import servicer as trainer_service
from services.trainer.settings import TrainerSettings

# Every posttrain service, by the proto module that declares it.
PROTO_MODULES = (
    intake_pb2,
    registry_pb2,
    training_pb2,
    comparison_pb2,
    evaluation_pb2,
    gateway_pb2,
)
ROLE_NAMES = ("viewer", "uploader", "approver", "trainer", "operator", "rater", "client", "admin")


def all_methods() -> list:
    """(service full name, MethodDescriptor) of every RPC in the protos."""
    return [
        (service.full_name, method)
        for module in PROTO_MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def method_id(entry) -> str:
    service, method = entry
    return f"{service.rsplit('.', 1)[-1]}.{method.name}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Fleet:
    server: GrpcServer
    engines: dict[str, Engine]
    auth_engine: Engine
    key_store: ApiKeyStore
    store: ArtifactStore
    keys: dict[str, str]  # role (or "revoked") -> key of tenant acme
    s3: S3Settings
    settings: dict[str, Any]  # service -> the settings its register() got
    channels: list = field(default_factory=list)

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self.server.address)
        self.channels.append(channel)
        return channel

    def row_counts(self) -> dict[str, int]:
        """Rows of every table of every service database: what a refused call must not change."""
        counts = {}
        for name, engine in self.engines.items():
            tables = sa.inspect(engine).get_table_names()
            with engine.connect() as conn:
                for table in tables:
                    if table == "alembic_version" or table.startswith("_"):
                        continue
                    query = sa.text(f'SELECT COUNT(*) FROM "{table}"')
                    counts[f"{name}.{table}"] = conn.execute(query).scalar_one()
        return counts

    def objects(self) -> list[str]:
        return sorted(o.key for o in self.store.list_objects(""))


@pytest.fixture(scope="module")
def fleet(stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp: Path = tmp_path_factory.mktemp("fleet")
    bucket = f"rob-{uuid.uuid4().hex[:10]}"
    s3 = stack.s3_settings(bucket=bucket)
    store = ArtifactStore.from_settings(s3)
    store.ensure_bucket()
    kafka = KafkaSettings(bootstrap_servers=stack.kafka_bootstrap)
    port = _free_port()
    target = f"127.0.0.1:{port}"
    common = dict(kafka=kafka, s3=s3, triton=TritonSettings(grpc_url="127.0.0.1:1"))

    def engine_for(name: str) -> Engine:
        return create_db_engine(f"sqlite:///{tmp / name}.sqlite3")

    engines = {n: engine_for(n) for n in ("intake", "registry", "trainer", "evaluator", "gateway")}
    trainer_settings = TrainerSettings(
        state_dir=str(tmp / "trainer"), intake_target=target, registry_target=target, **common
    )
    settings: dict[str, Any] = {
        "intake": IntakeSettings(state_dir=str(tmp / "intake"), registry_target=target, **common),
        "registry": RegistrySettings(**common),
        "trainer": trainer_settings,
        "evaluator": EvaluatorSettings(
            state_dir=str(tmp / "evaluator"), registry_target=target, torch_threads=1, **common
        ),
        "gateway": GatewaySettings(
            triton_model_repository=str(tmp / "triton-models"),
            model_cache_dir=str(tmp / "model-cache"),
            default_timeout_s=2.0,
            **common,
        ),
    }
    entries = [
        *intake_service.register(settings["intake"], engines["intake"]),
        *registry_service.register(settings["registry"], engines["registry"]),
    ]
    training = trainer_service.register(trainer_settings, engines["trainer"])
    entries += [
        *training,
        comparisons.servicer_entry(
            trainer_settings,
            engines["trainer"],
            training[0][1].datasets,
            training[0][1].base_models,
        ),
        *evaluator_service.register(settings["evaluator"], engines["evaluator"]),
        *gateway_service.register(settings["gateway"], engines["gateway"]),
    ]
    auth_engine = engine_for("auth")
    apply_migrations(auth_engine, "auth", AUTH_MIGRATIONS)
    key_store = ApiKeyStore(auth_engine)
    keys = {role: key_store.create_key(f"{role}-1", [role], "acme") for role in ROLE_NAMES}
    keys["globex-admin"] = key_store.create_key("globex-admin", ["admin"], "globex")
    keys["revoked"] = key_store.create_key("revoked", ["admin"], "acme")
    key_store.revoke(keys["revoked"])
    names = [s.full_name for m in PROTO_MODULES for s in m.DESCRIPTOR.services_by_name.values()]
    server = GrpcServer(
        GrpcServerSettings(max_workers=16, grace_seconds=0),
        entries,
        service_names=names,
        interceptors=standard_interceptors(key_store),
        port=port,
        host="127.0.0.1",
    )
    server.start()
    fleet = Fleet(server, engines, auth_engine, key_store, store, keys, s3, settings)
    try:
        yield fleet
    finally:
        for channel in fleet.channels:
            channel.close()
        server.stop(grace=0)
        for engine in [*engines.values(), auth_engine]:
            engine.dispose()
        remove_bucket(store.client, bucket)
