"""Logging for the services: correlation ids carried across RPCs, and one log line format.

A correlation id names one user-visible operation as it crosses services. The server
interceptor takes it from the `x-correlation-id` metadata (or makes one) and keeps it in
the contextvar of posttrain.correlation for the length of the RPC; the client interceptor sends the current one on
outgoing calls; every log record gets it, and the service name, through ContextFilter.
Named logs.py so that it never shadows the standard library's logging.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

import grpc

from posttrain.correlation import (
    correlation_scope,
    current_correlation_id,
    new_correlation_id,
    set_correlation_id,
    valid_correlation_id,
)
from posttrain.rpc._interceptors import (
    MetadataClientInterceptor,
    in_own_context,
    is_infrastructure,
    metadata_value,
    wrap_handler,
)

CORRELATION_ID_HEADER = "x-correlation-id"
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(service)s [%(correlation_id)s] %(name)s: %(message)s"

__all__ = [
    "CORRELATION_ID_HEADER",
    "ContextFilter",
    "CorrelationIdInterceptor",
    "JsonFormatter",
    "configure_logging",
    "correlation_id_client_interceptor",
    "correlation_scope",
    "current_correlation_id",
    "new_correlation_id",
    "valid_correlation_id",
]


class CorrelationIdInterceptor(grpc.ServerInterceptor):
    """Puts the caller's `x-correlation-id` (or a new id) in the context of each RPC."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or is_infrastructure(handler_call_details.method):
            return handler
        incoming = metadata_value(handler_call_details.invocation_metadata, CORRELATION_ID_HEADER)

        def setup(_request: Any, _context: grpc.ServicerContext) -> None:
            set_correlation_id(incoming)

        return wrap_handler(handler, lambda b, streaming: in_own_context(setup, b, streaming))


def correlation_id_client_interceptor() -> MetadataClientInterceptor:
    """Sends the current correlation id on each call, or a fresh one per call outside any
    scope (so that the caller can quote the id the server logged)."""
    return MetadataClientInterceptor(
        lambda: [(CORRELATION_ID_HEADER, current_correlation_id() or new_correlation_id())]
    )


class ContextFilter(logging.Filter):
    """Adds `service` and `correlation_id` ("-" outside an RPC) to every record it sees."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "correlation_id"):
            record.correlation_id = current_correlation_id() or "-"
        if not hasattr(record, "service"):
            record.service = self.service
        return True


# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "correlation_id",
    "service",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, correlation id, logger, message,
    the record's `extra` fields, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "service": getattr(record, "service", "-"),
            "correlation_id": getattr(record, "correlation_id", "-"),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # Records from a handler without ContextFilter must not fail the format string.
        record.__dict__.setdefault("service", "-")
        record.__dict__.setdefault("correlation_id", "-")
        return super().format(record)


_installed: list[logging.Handler] = []


def configure_logging(service_name: str, level: str | int = "INFO", fmt: str = "text") -> None:
    """Root logging to stderr, as text or JSON lines, with service and correlation id on
    every line. Calling it again replaces what the previous call installed."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {fmt!r}")
    root = logging.getLogger()
    for handler in _installed:
        root.removeHandler(handler)
    _installed.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter(service_name))
    handler.setFormatter(JsonFormatter() if fmt == "json" else _TextFormatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    _installed.append(handler)
