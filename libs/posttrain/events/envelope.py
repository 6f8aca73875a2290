"""The one envelope every event travels in, and its encoding on the wire.

Kafka value = serialized posttrain.v1.Envelope; Kafka key = aggregate id (ordering per
aggregate); headers repeat the routing fields (content-type, event-type, event-id,
correlation-id) so tools can filter without decoding. Upstream systems may instead send
JSON (content-type application/json) on the public `data.approved` topic.
"""

from __future__ import annotations

import datetime as dt
import uuid

from google.protobuf.message import DecodeError, Message

from posttrain.correlation import current_correlation_id
from posttrain.events.topics import payload_type
from posttrain.v1 import events_pb2

ENVELOPE_CONTENT_TYPE = "application/x-protobuf; messageType=posttrain.v1.Envelope"
JSON_CONTENT_TYPE = "application/json"
SCHEMA_VERSION = 1


class EnvelopeError(ValueError):
    """The bytes are not a valid posttrain envelope, or the payload does not match."""


def new_event_id() -> str:
    return uuid.uuid4().hex


def make_envelope(
    event_type: str,
    payload: Message,
    *,
    producer: str,
    aggregate_id: str,
    correlation_id: str = "",
    causation: events_pb2.Envelope | None = None,
    event_id: str | None = None,
    occurred_at: dt.datetime | None = None,
) -> events_pb2.Envelope:
    expected = payload_type(event_type)
    if not isinstance(payload, expected):
        raise TypeError(
            f"event {event_type!r} carries {expected.DESCRIPTOR.full_name}, "
            f"got {type(payload).__name__}"
        )
    if not aggregate_id:
        raise ValueError("aggregate_id is required: it is the Kafka key that orders events")
    env = events_pb2.Envelope(
        event_id=event_id or new_event_id(),
        event_type=event_type,
        schema_version=SCHEMA_VERSION,
        producer=producer,
        # A follow-up event keeps the correlation id of what caused it; an event staged in
        # an RPC or by a job takes the id of that operation (see posttrain.correlation).
        correlation_id=correlation_id
        or (causation.correlation_id if causation else "")
        or current_correlation_id()
        or new_event_id(),
        causation_id=causation.event_id if causation else "",
        aggregate_id=aggregate_id,
        payload_type=payload.DESCRIPTOR.full_name,
        payload=payload.SerializeToString(),
    )
    env.occurred_at.FromDatetime(occurred_at or dt.datetime.now(dt.UTC))
    return env


def encode(env: events_pb2.Envelope) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) for a Kafka record."""
    headers = [
        ("content-type", ENVELOPE_CONTENT_TYPE.encode()),
        ("event-type", env.event_type.encode()),
        ("event-id", env.event_id.encode()),
        ("correlation-id", env.correlation_id.encode()),
    ]
    return env.aggregate_id.encode(), env.SerializeToString(), headers


def decode(value: bytes) -> events_pb2.Envelope:
    env = events_pb2.Envelope()
    try:
        env.ParseFromString(value)
    except DecodeError as exc:
        raise EnvelopeError(f"not a posttrain envelope: {exc}") from exc
    if not env.event_id or not env.event_type:
        raise EnvelopeError("envelope without event_id or event_type")
    return env


def unpack(env: events_pb2.Envelope) -> Message:
    """The payload message, checked against the event type's declared payload."""
    try:
        cls = payload_type(env.event_type)
    except ValueError as exc:
        raise EnvelopeError(str(exc)) from exc
    if env.payload_type and env.payload_type != cls.DESCRIPTOR.full_name:
        raise EnvelopeError(
            f"event {env.event_type!r} must carry {cls.DESCRIPTOR.full_name}, "
            f"envelope says {env.payload_type}"
        )
    msg = cls()
    try:
        msg.ParseFromString(env.payload)
    except DecodeError as exc:
        raise EnvelopeError(f"payload of {env.event_type} does not parse: {exc}") from exc
    return msg
