"""A real gRPC server on a loopback free port running the probe servicer, and an API key
store in SQLite under tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from rpc_probe import INTAKE, REGISTRY, TRAINING, grpc_settings, probe_servicers

from posttrain.db import apply_migrations, create_db_engine
from posttrain.rpc import (
    AUTH_MIGRATIONS,
    ApiKeyStore,
    GrpcServer,
    make_channel,
    standard_interceptors,
)


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[ApiKeyStore]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'auth.sqlite3'}")
    apply_migrations(engine, "auth", AUTH_MIGRATIONS)
    yield ApiKeyStore(engine)
    engine.dispose()


@pytest.fixture
def start_server(keys: ApiKeyStore) -> Iterator[Callable[..., GrpcServer]]:
    """start_server(auth_required=True, **settings) -> a started server with the probe and
    the standard interceptors; stopped (without grace) after the test."""
    started: list[GrpcServer] = []

    def start(*, auth_required: bool = True, **settings: Any) -> GrpcServer:
        server = GrpcServer(
            grpc_settings(**settings),
            probe_servicers(),
            service_names=[REGISTRY, TRAINING, INTAKE],
            interceptors=standard_interceptors(keys, auth_required=auth_required),
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(grace=0)


@pytest.fixture
def admin_key(keys: ApiKeyStore) -> str:
    return keys.create_key("root", ["admin"], "acme")


@pytest.fixture
def server(start_server: Callable[..., GrpcServer]) -> GrpcServer:
    return start_server()


@pytest.fixture
def connect(server: GrpcServer) -> Iterator[Callable[..., grpc.Channel]]:
    """connect(api_key=None, **make_channel kwargs) -> a channel to `server`."""
    channels: list[grpc.Channel] = []

    def open_channel(api_key: str | None = None, **kwargs: Any) -> grpc.Channel:
        channel = make_channel(server.address, api_key=api_key, **kwargs)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()
