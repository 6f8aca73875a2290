"""The event bus: one envelope, topic names in one place, an outbox-backed producer side,
and an idempotent at-least-once consumer runner with retries and dead-letter topics.

Must never: commit a Kafka offset before the handler's DB transaction committed, or
publish a state-change event that is not backed by a committed outbox row.
"""

from posttrain.events import topics
from posttrain.events.admin import ensure_topics
from posttrain.events.consumer import (
    EventConsumer,
    HandlerContext,
    PoisonEvent,
    ReceivedEvent,
    RetryPolicy,
)
from posttrain.events.envelope import decode, encode, make_envelope, unpack
from posttrain.events.outbox import OutboxRelay, add_to_outbox, outbox_emitter
from posttrain.events.producer import EventProducer
from posttrain.events.runtime import EventRuntime
from posttrain.events.tables import EVENTS_MIGRATIONS, OutboxEvent, ProcessedEvent

__all__ = [
    "EVENTS_MIGRATIONS",
    "EventConsumer",
    "EventProducer",
    "EventRuntime",
    "HandlerContext",
    "OutboxEvent",
    "OutboxRelay",
    "PoisonEvent",
    "ProcessedEvent",
    "ReceivedEvent",
    "RetryPolicy",
    "add_to_outbox",
    "outbox_emitter",
    "decode",
    "encode",
    "ensure_topics",
    "make_envelope",
    "topics",
    "unpack",
]
