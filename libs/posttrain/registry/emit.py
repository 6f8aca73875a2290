"""How the registry core announces a state change: through a callable that stages an
event in the caller's transaction (the outbox), so the change and its event commit
together. The service passes HandlerContext.emit in event handlers and an
add_to_outbox wrapper in RPCs; the core never sees Kafka."""

from __future__ import annotations

from typing import Any, Protocol

from google.protobuf.message import Message


class Emit(Protocol):
    def __call__(self, event_type: str, payload: Message, *, aggregate_id: str) -> Any: ...
