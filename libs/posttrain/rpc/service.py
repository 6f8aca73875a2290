"""The start-up every service shares: `python -m services.<name>` calls service_main with
its settings and a function that builds its servicers. Keeps services/*/__main__.py to a
few lines and identical in shape."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import grpc
from pydantic import Field
from sqlalchemy import Engine

from posttrain.config import ServiceSettings
from posttrain.db import apply_migrations, create_db_engine
from posttrain.rpc.auth import (
    AUTH_MIGRATIONS,
    ApiKeyStore,
    AuthInterceptor,
    AuthSettings,
    seed_bootstrap_admin_key,
)
from posttrain.rpc.errors import ErrorInterceptor
from posttrain.rpc.logs import CorrelationIdInterceptor, configure_logging
from posttrain.rpc.metrics import MetricsEndpoint, MetricsInterceptor
from posttrain.rpc.server import AddServicerFn, GrpcServer

log = logging.getLogger(__name__)


class RpcServiceSettings(ServiceSettings):
    """ServiceSettings plus what the RPC layer needs; each service's settings subclass it."""

    log_format: Literal["text", "json"] = Field("text", description="log line format")
    auth: AuthSettings = Field(default_factory=AuthSettings)


# (settings, the service's database engine) -> [(add_<Service>Servicer_to_server, servicer)]
RegisterFn = Callable[[Any, Engine], Sequence[tuple[AddServicerFn, Any]]]


def standard_interceptors(
    keys: ApiKeyStore, *, auth_required: bool = True
) -> list[grpc.ServerInterceptor]:
    """Outermost first: metrics see the final status of every call, the correlation id is
    set before anything logs, and errors raised by auth or by the handler are mapped in
    one place."""
    return [
        MetricsInterceptor(),
        CorrelationIdInterceptor(),
        ErrorInterceptor(),
        AuthInterceptor(keys, required=auth_required),
    ]


class BackgroundWorker(Protocol):
    """Something a service runs beside its gRPC server (event consumers, the outbox
    relay): started before the server accepts calls, stopped after it drained."""

    def start(self) -> Any: ...

    def stop(self) -> None: ...


# (settings, engine) -> workers to run for the life of the process
WorkersFn = Callable[[Any, Engine], Sequence[BackgroundWorker]]


def service_main(
    settings: RpcServiceSettings,
    register: RegisterFn,
    *,
    service_names: Sequence[str],
    workers: WorkersFn | None = None,
) -> int:
    """Logging, database and auth migrations, the /metrics endpoint (settings.metrics_port,
    0 = none), background workers, the server; serves until SIGTERM. Returns the process
    exit code."""
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    engine = create_db_engine(settings.database_url())
    auth_engine = create_db_engine(settings.auth.db_url) if settings.auth.db_url else engine
    try:
        apply_migrations(auth_engine, "auth", AUTH_MIGRATIONS)
        keys = ApiKeyStore(auth_engine, cache_seconds=settings.auth.cache_seconds)
        if settings.auth.bootstrap_admin_key:
            seed_bootstrap_admin_key(
                keys, settings.auth.bootstrap_admin_key, tenant=settings.auth.bootstrap_tenant
            )
        servicers = register(settings, engine)
        running: list[BackgroundWorker] = []
        if settings.metrics_port:
            running.append(MetricsEndpoint(settings.grpc.host, settings.metrics_port))
        running += list(workers(settings, engine)) if workers else []
        for worker in running:
            worker.start()
        server = GrpcServer(
            settings.grpc,
            servicers,
            service_names=service_names,
            interceptors=standard_interceptors(keys, auth_required=settings.grpc.auth_required),
            port=settings.grpc_port(),
        )
        if not settings.grpc.auth_required:
            log.warning("auth_required is off: calls without an API key are accepted")
        try:
            server.serve_forever()
        finally:
            for worker in reversed(running):
                worker.stop()
    finally:
        engine.dispose()
        if auth_engine is not engine:
            auth_engine.dispose()
    return 0
