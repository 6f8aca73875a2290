"""EventProducer: publishes envelopes with acks=all and the idempotent producer."""

from __future__ import annotations

import logging
import threading

from google.protobuf.message import Message
from kafka import KafkaProducer

from posttrain.config import KafkaSettings
from posttrain.events import envelope as envelopes
from posttrain.v1 import events_pb2

log = logging.getLogger(__name__)


class EventProducer:
    """Synchronous by default: `publish` returns once the broker acknowledged the write.

    Services that change state don't publish directly; they write to the outbox, whose
    relay uses this class. Direct publishing is for events with no DB change behind them
    (progress ticks, inference logs)."""

    def __init__(self, settings: KafkaSettings, *, producer_name: str, linger_ms: int = 5):
        self.producer_name = producer_name
        self._settings = settings
        self._linger_ms = linger_ms
        self._lock = threading.Lock()
        self._producer = self._new_producer()

    def _new_producer(self) -> KafkaProducer:
        return KafkaProducer(
            bootstrap_servers=self._settings.bootstrap_servers,
            security_protocol=self._settings.security_protocol,
            client_id=f"{self.producer_name}-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=self._linger_ms,
            max_request_size=self._settings.max_message_bytes,
            retries=5,
        )

    def reset(self) -> None:
        """Replace the Kafka producer by a new one (a new producer id), dropping what the
        old one still held. After a failed flush: a broker that lost its producer state (a
        restarted broker without durable state, an expired producer id) answers the old
        id's writes with UnknownProducerId for ever, and kafka-python only resets the
        sequence, so nothing would be published again. The caller sends again what was
        not acknowledged (the outbox relay does: unmarked rows stay pending)."""
        with self._lock:
            old, self._producer = self._producer, self._new_producer()
        try:
            old.close(timeout=0)
        except Exception:  # noqa: BLE001 - the old one is broken anyway
            log.debug("closing the replaced producer failed", exc_info=True)

    def publish(
        self,
        event_type: str,
        payload: Message,
        *,
        aggregate_id: str,
        correlation_id: str = "",
        causation: events_pb2.Envelope | None = None,
        wait: bool = True,
    ) -> events_pb2.Envelope:
        env = envelopes.make_envelope(
            event_type,
            payload,
            producer=self.producer_name,
            aggregate_id=aggregate_id,
            correlation_id=correlation_id,
            causation=causation,
        )
        self.send_envelope(event_type, env, wait=wait)
        return env

    def send_envelope(self, topic: str, env: events_pb2.Envelope, *, wait: bool = True) -> None:
        key, value, headers = envelopes.encode(env)
        self.send_raw(topic, key, value, headers, wait=wait)

    def send_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
        *,
        wait: bool = True,
        timeout_s: float = 30.0,
    ):
        with self._lock:
            producer = self._producer
        future = producer.send(topic, key=key, value=value, headers=headers)
        if wait:
            return future.get(timeout=timeout_s)
        return future

    def flush(self, timeout_s: float = 30.0) -> None:
        with self._lock:
            producer = self._producer
        producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.close(timeout=timeout_s)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
