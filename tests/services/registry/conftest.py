"""The registry service for real: its servicer in a GrpcServer on a free port with the
standard interceptors and API keys, on SQLite and PostgreSQL, with an artifact store on
the session's S3 server; and (module-scoped, for the Kafka tests) the same service with
its event runtime consuming from the session's broker."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

# The registry's test builders live beside the core's tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "libs" / "registry"))

from registry_factories import migrate
from s3_buckets import store_on_new_bucket  # noqa: E402

from posttrain.config import GrpcServerSettings, KafkaSettings  # noqa: E402
from posttrain.db import apply_migrations, create_db_engine  # noqa: E402
from posttrain.events import EventRuntime, decode, unpack  # noqa: E402
from posttrain.events.tables import OutboxEvent  # noqa: E402
from posttrain.rpc import (  # noqa: E402
    AUTH_MIGRATIONS,
    ApiKeyStore,
    GrpcServer,
    make_channel,
    standard_interceptors,
)
from posttrain.storage import ArtifactStore  # noqa: E402
from posttrain.v1 import registry_pb2_grpc  # noqa: E402
from services.registry.handlers import HANDLERS  # noqa: E402
from services.registry.servicer import SERVICE_NAME, RegistryServicer  # noqa: E402
from services.registry.settings import RegistrySettings  # noqa: E402


@dataclass
class RegistryUnderTest:
    engine: Engine
    server: GrpcServer
    keys: ApiKeyStore
    store: ArtifactStore
    _channels: list = field(default_factory=list)

    def stub(
        self, *roles: str, tenant: str = "acme", name: str = ""
    ) -> registry_pb2_grpc.RegistryServiceStub:
        """A client holding a fresh API key with these roles (none: anonymous)."""
        key = None
        if roles:
            key = self.keys.create_key(name or "-".join(roles), list(roles), tenant)
        channel = make_channel(self.server.address, api_key=key)
        self._channels.append(channel)
        return registry_pb2_grpc.RegistryServiceStub(channel)

    def key(self, *roles: str, tenant: str = "acme", name: str = "") -> str:
        return self.keys.create_key(name or "-".join(roles), list(roles), tenant)

    def outbox(self, event_type: str) -> list:
        """Payloads staged for `event_type`, oldest first."""
        with self.engine.connect() as conn:
            values = conn.execute(
                sa.select(OutboxEvent.value)
                .where(OutboxEvent.topic == event_type)
                .order_by(OutboxEvent.id)
            ).scalars()
            return [unpack(decode(v)) for v in values]

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self.server.stop(grace=0)


def start_registry(engine: Engine, store: ArtifactStore) -> RegistryUnderTest:
    migrate(engine)
    apply_migrations(engine, "auth", AUTH_MIGRATIONS)
    keys = ApiKeyStore(engine)
    settings = RegistrySettings(grpc=GrpcServerSettings(max_workers=8, grace_seconds=0))
    server = GrpcServer(
        settings.grpc,
        [
            (
                registry_pb2_grpc.add_RegistryServiceServicer_to_server,
                RegistryServicer(settings, engine, store),
            )
        ],
        service_names=[SERVICE_NAME],
        interceptors=standard_interceptors(keys),
        port=0,
        host="127.0.0.1",
    )
    server.start()
    return RegistryUnderTest(engine, server, keys, store)


@pytest.fixture(scope="module")
def store(stack) -> Iterator[ArtifactStore]:
    with store_on_new_bucket(stack.s3_settings(bucket=f"reg-{uuid.uuid4().hex[:10]}")) as store:
        yield store


@pytest.fixture
def registry(db_url: str, store: ArtifactStore) -> Iterator[RegistryUnderTest]:
    engine = create_db_engine(db_url)
    running = start_registry(engine, store)
    yield running
    running.close()
    engine.dispose()


# ---------------------------------------------------------------- with the broker


@dataclass
class LiveRegistry:
    """The registry with its event runtime, and the broker around it."""

    service: RegistryUnderTest
    runtime: EventRuntime
    kafka: KafkaSettings

    def wait_for(self, what: str, check: Callable[[], object], timeout_s: float = 45.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture(scope="module")
def live(module_db_url: str, store: ArtifactStore, stack) -> Iterator[LiveRegistry]:
    # Short session timeout: Tansu's first group join takes about half of it.
    kafka = KafkaSettings(
        bootstrap_servers=stack.kafka_bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=1000
    )
    engine = create_db_engine(module_db_url)
    service = start_registry(engine, store)
    runtime = EventRuntime(
        kafka,
        engine,
        service_name="registry",
        handlers=HANDLERS,
        group_id=f"registry-test-{uuid.uuid4().hex[:8]}",
    ).start()
    try:
        assert runtime.ready.wait(60), "the registry's event runtime did not start"
        yield LiveRegistry(service, runtime, kafka)
    finally:
        runtime.stop()
        service.close()
        engine.dispose()
