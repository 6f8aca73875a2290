"""Prometheus metrics every service has: its gRPC calls (count by status code, latency),
and the /metrics HTTP endpoint that serves the process's default registry.

Labels: `service` is the gRPC service ("posttrain.v1.IntakeService"), `method` the RPC
name, `code` the status name the caller saw (OK, NOT_FOUND, ...). A streaming RPC is
counted and timed when its stream ends. Health and reflection calls are not counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import grpc
from prometheus_client import Counter, Histogram, start_http_server

from posttrain.rpc._interceptors import is_infrastructure, service_of, wrap_handler

log = logging.getLogger(__name__)

GRPC_REQUESTS = Counter(
    "posttrain_grpc_requests_total",
    "gRPC calls handled, by final status code",
    ["service", "method", "code"],
)
GRPC_SECONDS = Histogram(
    "posttrain_grpc_request_seconds",
    "time from receiving a gRPC call to its end (a stream's last message)",
    ["service", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)


def _status_of(context: grpc.ServicerContext, exc: BaseException | None) -> str:
    """The status the caller sees: the one set on the context (abort, set_code), else OK
    for a normal return, CANCELLED for a stream closed early, UNKNOWN for an exception."""
    code = context.code()
    if code is not None:
        return code.name
    if exc is None:
        return "OK"
    if isinstance(exc, GeneratorExit) or not context.is_active():
        return "CANCELLED"
    return "UNKNOWN"


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every call; goes outermost, so it sees the final status of calls
    that auth or the error mapping ended."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method_path = handler_call_details.method
        if handler is None or is_infrastructure(method_path):
            return handler
        service = service_of(method_path)
        method = method_path.rsplit("/", 1)[-1]
        seconds = GRPC_SECONDS.labels(service, method)

        def record(context: grpc.ServicerContext, started: float, exc: BaseException | None):
            GRPC_REQUESTS.labels(service, method, _status_of(context, exc)).inc()
            seconds.observe(time.perf_counter() - started)

        def wrap(behavior, response_streaming: bool):
            if response_streaming:

                def streaming_response(
                    request: Any, context: grpc.ServicerContext
                ) -> Iterator[Any]:
                    started = time.perf_counter()
                    try:
                        yield from behavior(request, context)
                    except BaseException as exc:
                        record(context, started, exc)
                        raise
                    record(context, started, None)

                return streaming_response

            def unary_response(request: Any, context: grpc.ServicerContext) -> Any:
                started = time.perf_counter()
                try:
                    response = behavior(request, context)
                except BaseException as exc:
                    record(context, started, exc)
                    raise
                record(context, started, None)
                return response

            return unary_response

        return wrap_handler(handler, wrap)


class MetricsEndpoint:
    """Prometheus /metrics on host:port (the process's default registry), in a thread;
    start()/stop() like any background worker of service_main."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._server = None

    def start(self) -> MetricsEndpoint:
        self._server, _ = start_http_server(self.port, addr=self.host)
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
