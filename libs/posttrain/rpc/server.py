"""The gRPC server every service runs: a thread pool (the services are CPU-heavy Python
and stay synchronous), health and reflection, message size limits, optional TLS, and a
graceful shutdown on SIGTERM.

Shutdown order: health turns NOT_SERVING, the server stops accepting RPCs, in-flight
RPCs get `grace_seconds` to finish, then whatever is left is cancelled.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from posttrain.config import GrpcServerSettings

log = logging.getLogger(__name__)

# The generated add_<Service>Servicer_to_server(servicer, server).
AddServicerFn = Callable[[Any, grpc.Server], None]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _read_pem(path: str, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{setting} {path!r} cannot be read: {exc}") from exc


class GrpcServer:
    """One gRPC server, bound at construction; `port` is the port actually bound.

    `service_names` are the full names of the registered services (e.g.
    "posttrain.v1.IntakeService"): health reports each of them, and "" for the whole
    server, and reflection lists them. `port` overrides settings.port; 0 = a free port.
    """

    def __init__(
        self,
        settings: GrpcServerSettings,
        servicers: Sequence[tuple[AddServicerFn, Any]],
        *,
        service_names: Sequence[str],
        interceptors: Sequence[grpc.ServerInterceptor] = (),
        port: int | None = None,
        host: str | None = None,
    ) -> None:
        self.settings = settings
        self.service_names = list(service_names)
        self.health = health.HealthServicer()
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="grpc"),
            interceptors=list(interceptors),
            options=[
                ("grpc.max_send_message_length", settings.max_message_bytes),
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                # grpc sets SO_REUSEPORT by default, so a second server on a busy port
                # would bind "successfully" and share the traffic; fail instead.
                ("grpc.so_reuseport", 0),
            ],
        )
        for add_to_server, servicer in servicers:
            add_to_server(servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        for name in ["", *self.service_names]:
            self.health.set(name, NOT_SERVING)
        self.host = host if host is not None else settings.host
        self.port = self._bind(self.host, settings.port if port is None else port)
        self.tls = bool(settings.tls_cert_file)
        self._started = False
        self._stop_lock = threading.Lock()
        self._stopping = False
        self._stopped = threading.Event()

    def _bind(self, host: str, port: int) -> int:
        address = (
            f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
        )
        cert, key = self.settings.tls_cert_file, self.settings.tls_key_file
        if bool(cert) != bool(key):
            raise ValueError("TLS needs both tls_cert_file and tls_key_file, or neither")
        if cert:
            credentials = grpc.ssl_server_credentials(
                [(_read_pem(key, "tls_key_file"), _read_pem(cert, "tls_cert_file"))]
            )
        try:
            if cert:
                bound = self._server.add_secure_port(address, credentials)
            else:
                bound = self._server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot bind gRPC server to {address}: {exc}") from exc
        if bound == 0:
            raise OSError(f"cannot bind gRPC server to {address}")
        return bound

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> int:
        """Starts serving and turns health SERVING; returns the bound port."""
        self._server.start()
        self._started = True
        for name in ["", *self.service_names]:
            self.health.set(name, SERVING)
        log.info(
            "serving %s on %s (%s)",
            ", ".join(self.service_names) or "nothing",
            self.address,
            "TLS" if self.tls else "plaintext",
        )
        return self.port

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, no new RPCs, `grace` seconds (default from settings)
        for in-flight ones. Blocks until done; later calls just wait for the first."""
        with self._stop_lock:
            first = not self._stopping
            self._stopping = True
        if not first:
            self._stopped.wait()
            return
        grace = self.settings.grace_seconds if grace is None else grace
        log.info("shutting down: NOT_SERVING, %.1fs grace for in-flight RPCs", grace)
        self.health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        self._stopped.set()
        log.info("stopped")

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the server has stopped; False on timeout."""
        return self._stopped.wait(timeout)

    def serve_forever(self) -> None:
        """Serves until SIGTERM or SIGINT (or stop() from another thread), then stops
        gracefully. A second signal during the grace period cancels what is left.
        Must run in the main thread, where Python delivers signals."""
        if not self._started:
            self.start()
        requested = threading.Event()

        def on_signal(signum: int, _frame: Any) -> None:
            if requested.is_set():
                log.warning("%s again: cancelling in-flight RPCs", signal.Signals(signum).name)
                self._server.stop(0)
                return
            log.info("%s received", signal.Signals(signum).name)
            requested.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not requested.wait(0.5):
                if self._stopped.is_set():
                    return
            self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def __enter__(self) -> GrpcServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
