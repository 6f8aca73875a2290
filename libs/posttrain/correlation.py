"""Correlation ids: one id names one user-visible operation (an upload, a training job and
everything it sets off) as it crosses RPCs, events and services.

The current id lives in a contextvar. The gRPC interceptor sets it from `x-correlation-id`
for the length of an RPC (posttrain.rpc.logs), the event consumer from the envelope it
handles, a training worker from its job; new envelopes take it when their producer gives
none, and every log line shows it. Knows nothing of gRPC or Kafka, so both sides use it.
"""

from __future__ import annotations

import contextvars
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

# Ids from clients end up in log lines: keep them short and free of anything that could
# forge a line (newlines, quotes) or a field.
_VALID_CORRELATION_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "posttrain_correlation_id", default=None
)


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def current_correlation_id() -> str | None:
    return _correlation_id.get()


def valid_correlation_id(value: str | None) -> bool:
    return bool(value) and _VALID_CORRELATION_ID.fullmatch(value) is not None


def set_correlation_id(value: str | None) -> str:
    """Sets the id of the current context (a new one if `value` is missing or invalid) and
    returns it. For code that runs in a context of its own (an RPC's); else use the scope."""
    cid = value if valid_correlation_id(value) else new_correlation_id()
    _correlation_id.set(cid)
    return cid


@contextmanager
def correlation_scope(correlation_id: str | None = None) -> Iterator[str]:
    """Runs a block under `correlation_id` (a new one if None or invalid): for event
    handlers, workers and CLIs."""
    cid = correlation_id if valid_correlation_id(correlation_id) else new_correlation_id()
    token = _correlation_id.set(cid)
    try:
        yield cid
    finally:
        _correlation_id.reset(token)
