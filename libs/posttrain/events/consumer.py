"""EventConsumer: an at-least-once consumer-group runner with idempotent handling.

For each record, in partition order:
  1. skip it if its event id is already recorded for this consumer group;
  2. open a DB transaction, call the handler with it, record the event id in the SAME
     transaction, commit — so the effect and the "processed" marker can't diverge;
  3. on failure: roll back, retry with exponential backoff; after `max_attempts`, or at
     once for a PoisonEvent, put a DeadLetter (error + original record) on <topic>.dlq;
  4. commit the Kafka offset only after 2 or 3 finished.
A crash anywhere re-delivers from the last committed offset; step 1 makes that harmless.

Each record is handled under its correlation id (posttrain.correlation): log lines show
it, and follow-up events keep it. Metrics: events by outcome, failed handler attempts,
handler time, and the group's lag per partition (refreshed every `lag_interval_s`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from google.protobuf.message import Message
from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from posttrain.config import KafkaSettings
from posttrain.correlation import correlation_scope, valid_correlation_id
from posttrain.db import utcnow
from posttrain.events import envelope as envelopes
from posttrain.events.outbox import add_to_outbox
from posttrain.events.producer import EventProducer
from posttrain.events.tables import ProcessedEvent
from posttrain.events.topics import dlq_topic
from posttrain.faults import crash_point
from posttrain.v1 import events_pb2

log = logging.getLogger(__name__)

EVENTS_HANDLED = Counter(
    "posttrain_events_handled_total",
    "events taken care of, by outcome: handled, duplicate, dead_lettered",
    ["group", "topic", "outcome"],
)
EVENT_FAILURES = Counter(
    "posttrain_events_failed_total",
    "handler attempts that raised (each is retried or dead-lettered)",
    ["group", "topic"],
)
EVENT_HANDLE_SECONDS = Histogram(
    "posttrain_event_handle_seconds", "handler time per event", ["group", "topic"]
)
CONSUMER_LAG = Gauge(
    "posttrain_events_consumer_lag",
    "records on the partition this group has not taken care of yet (end offset minus "
    "the next offset to handle)",
    ["group", "topic", "partition"],
)


class PoisonEvent(Exception):
    """The event can never be handled (malformed, contract violation): no retries."""


@dataclass
class ReceivedEvent:
    """One Kafka record, decoded lazily."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", b"").decode(errors="replace")

    @property
    def is_json(self) -> bool:
        return self.content_type.split(";")[0].strip() == envelopes.JSON_CONTENT_TYPE

    def envelope(self) -> events_pb2.Envelope:
        try:
            return envelopes.decode(self.value)
        except envelopes.EnvelopeError as exc:
            raise PoisonEvent(str(exc)) from exc

    def payload(self) -> Message:
        try:
            return envelopes.unpack(self.envelope())
        except envelopes.EnvelopeError as exc:
            raise PoisonEvent(str(exc)) from exc

    def json(self) -> Any:
        try:
            return json.loads(self.value)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PoisonEvent(f"value is not valid JSON: {exc}") from exc

    def correlation_id(self) -> str:
        """The operation this event belongs to: the envelope's correlation id, else the
        record's correlation-id header, else its dedupe key (an upstream event id), so
        that a redelivery logs under the same id."""
        if not self.is_json:
            try:
                cid = envelopes.decode(self.value).correlation_id
            except envelopes.EnvelopeError:
                cid = ""
            if valid_correlation_id(cid):
                return cid
        header = self.headers.get("correlation-id", b"").decode(errors="replace")
        if valid_correlation_id(header):
            return header
        key = self.dedupe_key()
        if valid_correlation_id(key):
            return key
        return "event:" + hashlib.sha256(key.encode()).hexdigest()[:32]

    def dedupe_key(self) -> str:
        """The idempotency key: the envelope's event id, a JSON event's `event_id`, or,
        for anything else, a hash of the exact bytes (a replay of identical bytes)."""
        if self.is_json:
            try:
                obj = json.loads(self.value)
                if (
                    isinstance(obj, dict)
                    and isinstance(obj.get("event_id"), str)
                    and obj["event_id"]
                ):
                    return obj["event_id"][:200]
            except (UnicodeDecodeError, json.JSONDecodeError):
                pass
        else:
            try:
                return envelopes.decode(self.value).event_id[:200]
            except envelopes.EnvelopeError:
                pass
        return "sha256:" + hashlib.sha256(self.topic.encode() + b"\0" + self.value).hexdigest()


@dataclass
class HandlerContext:
    """What a handler gets besides the event: its transaction and ways to emit events."""

    session: Session
    event: ReceivedEvent
    producer_name: str
    _dead_letter_reason: str | None = field(default=None, init=False)

    def emit(self, event_type: str, payload: Message, *, aggregate_id: str) -> events_pb2.Envelope:
        """Stage a follow-up event in the handler's transaction (outbox); it keeps the
        correlation id of the event being handled."""
        causation = None
        if not self.event.is_json:
            try:
                causation = envelopes.decode(self.event.value)
            except envelopes.EnvelopeError:
                causation = None
        return add_to_outbox(
            self.session,
            event_type,
            payload,
            producer=self.producer_name,
            aggregate_id=aggregate_id,
            correlation_id=self.event.correlation_id(),
            causation=causation,
        )

    def dead_letter(self, reason: str) -> None:
        """Commit the handler's effects AND put the record on the DLQ with `reason`
        (e.g. an upstream event refused, with a rejection event emitted)."""
        self._dead_letter_reason = reason


Handler = Callable[[ReceivedEvent, HandlerContext], None]


@dataclass
class RetryPolicy:
    max_attempts: int = 5
    base_delay_s: float = 0.2
    max_delay_s: float = 10.0

    def delay(self, attempt: int) -> float:
        # Full jitter: retries of many consumers don't synchronise.
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)))


class EventConsumer:
    def __init__(
        self,
        settings: KafkaSettings,
        *,
        group_id: str,
        handlers: dict[str, Handler],
        engine: Engine,
        producer: EventProducer,
        retry: RetryPolicy | None = None,
        max_poll_records: int = 100,
        max_poll_interval_ms: int = 600_000,
        auto_offset_reset: str = "earliest",
        lag_interval_s: float = 5.0,
    ):
        if not handlers:
            raise ValueError("an EventConsumer needs at least one topic handler")
        self.group_id = group_id
        self.handlers = dict(handlers)
        self.engine = engine
        self.producer = producer
        self.retry = retry or RetryPolicy()
        self.lag_interval_s = lag_interval_s
        self._next_lag_at = 0.0
        self._lag_reported: set[TopicPartition] = set()
        self._stop = threading.Event()
        self._consumer = KafkaConsumer(
            *self.handlers,
            bootstrap_servers=settings.bootstrap_servers,
            security_protocol=settings.security_protocol,
            group_id=group_id,
            client_id=f"{group_id}-consumer",
            enable_auto_commit=False,
            auto_offset_reset=auto_offset_reset,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            max_poll_records=max_poll_records,
            max_poll_interval_ms=max_poll_interval_ms,
            fetch_max_bytes=max(settings.max_message_bytes, 52428800),
            max_partition_fetch_bytes=settings.max_message_bytes,
        )

    # ------------------------------------------------------------------ running

    def poll_once(self, timeout_ms: int = 500) -> int:
        """Handle one poll's worth of records; returns how many were taken care of.

        Offsets are committed once per poll, after every record of it was handled or
        dead-lettered: a crash before the commit re-delivers records whose effects the
        dedupe table already holds, so they are skipped, never applied twice."""
        batches = self._consumer.poll(timeout_ms=timeout_ms)
        self._update_lag(batches)
        done = 0
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        try:
            for tp, records in batches.items():
                for record in records:
                    if self._stop.is_set() or not self._process(record):
                        return done  # shutting down: the rest is left for redelivery
                    offsets[tp] = OffsetAndMetadata(record.offset + 1, "", -1)
                    done += 1
        finally:
            if offsets:
                self._consumer.commit(offsets)
        return done

    def run(self, *, install_signal_handlers: bool = False) -> None:
        """Consume until stop() (or SIGTERM/SIGINT when install_signal_handlers)."""
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        try:
            while not self._stop.is_set():
                self.poll_once()
        finally:
            self.close()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=f"consumer-{self.group_id}", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._forget_lag(self._lag_reported)
        self._lag_reported = set()
        try:
            self._consumer.close(autocommit=False)
        except Exception:  # noqa: BLE001 - closing a broken connection must not mask the cause
            log.warning("error closing consumer %s", self.group_id, exc_info=True)

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment())

    def _update_lag(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Sets the lag gauge of the assigned partitions, at most every lag_interval_s:
        the next offset to handle is the first record just polled, else the position."""
        now = time.monotonic()
        if now < self._next_lag_at:
            return
        self._next_lag_at = now + self.lag_interval_s
        try:
            assigned = set(self._consumer.assignment())
            ends = self._consumer.end_offsets(list(assigned), timeout_ms=2000) if assigned else {}
            for tp in assigned:
                records = batches.get(tp)
                next_offset = records[0].offset if records else self._consumer.position(tp)
                if tp in ends and next_offset is not None:
                    lag = max(0, ends[tp] - next_offset)
                    CONSUMER_LAG.labels(self.group_id, tp.topic, str(tp.partition)).set(lag)
            self._forget_lag(self._lag_reported - assigned)  # moved to another member
            self._lag_reported = assigned
        except Exception:  # noqa: BLE001 - a metric must never stop consumption
            log.debug("could not measure the lag of %s", self.group_id, exc_info=True)

    def _forget_lag(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            try:
                CONSUMER_LAG.remove(self.group_id, tp.topic, str(tp.partition))
            except KeyError:  # another consumer of the group in this process did
                pass

    # ------------------------------------------------------------------ one record

    def _process(self, record: ConsumerRecord) -> bool:
        """Handle or dead-letter one record; False if it was abandoned for shutdown."""
        event = ReceivedEvent(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value or b"",
            headers={k: (v or b"") for k, v in (record.headers or [])},
        )
        with correlation_scope(event.correlation_id()):
            return self._process_event(event)

    def _process_event(self, event: ReceivedEvent) -> bool:
        key = event.dedupe_key()
        if self._already_processed(key):
            log.info("duplicate event %s on %s ignored", key, event.topic)
            EVENTS_HANDLED.labels(self.group_id, event.topic, "duplicate").inc()
            return True
        handler = self.handlers[event.topic]
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                outcome = self._handle_in_transaction(handler, event, key)
                crash_point("consumer.after_db_commit")  # handled, Kafka offset not committed
                EVENT_HANDLE_SECONDS.labels(self.group_id, event.topic).observe(
                    time.perf_counter() - started
                )
                EVENTS_HANDLED.labels(self.group_id, event.topic, outcome).inc()
                return True
            except _AlreadyProcessed:
                EVENTS_HANDLED.labels(self.group_id, event.topic, "duplicate").inc()
                return True
            except PoisonEvent as exc:
                EVENT_FAILURES.labels(self.group_id, event.topic).inc()
                self._dead_letter(event, key, exc, attempt)
                return True
            except Exception as exc:  # noqa: BLE001 - any handler failure is retried
                EVENT_FAILURES.labels(self.group_id, event.topic).inc()
                if attempt >= self.retry.max_attempts:
                    self._dead_letter(event, key, exc, attempt)
                    return True
                if self._stop.is_set():
                    return False
                delay = self.retry.delay(attempt)
                log.warning(
                    "handler for %s failed (attempt %d/%d), retrying in %.2fs: %s",
                    event.topic,
                    attempt,
                    self.retry.max_attempts,
                    delay,
                    exc,
                )
                self._stop.wait(delay)

    def _already_processed(self, key: str) -> bool:
        with Session(self.engine) as session:
            return (
                session.get(ProcessedEvent, {"consumer_group": self.group_id, "event_id": key})
                is not None
            )

    def _handle_in_transaction(self, handler: Handler, event: ReceivedEvent, key: str) -> str:
        with Session(self.engine) as session:
            try:
                with session.begin():
                    ctx = HandlerContext(session=session, event=event, producer_name=self.group_id)
                    handler(event, ctx)
                    outcome = "dead_lettered" if ctx._dead_letter_reason else "handled"
                    session.add(self._marker(event, key, outcome))
            except IntegrityError as exc:
                # Another consumer (a rebalance) recorded this event id first.
                if self._already_processed(key):
                    raise _AlreadyProcessed from exc
                raise
        if ctx._dead_letter_reason:
            self._publish_dead_letter(event, "Rejected", ctx._dead_letter_reason, 1)
        return outcome

    def _marker(self, event: ReceivedEvent, key: str, outcome: str) -> ProcessedEvent:
        return ProcessedEvent(
            consumer_group=self.group_id,
            event_id=key,
            topic=event.topic,
            partition=event.partition,
            offset=event.offset,
            outcome=outcome,
            processed_at=utcnow(),
        )

    def _dead_letter(
        self, event: ReceivedEvent, key: str, exc: BaseException, attempts: int
    ) -> None:
        log.error(
            "event %s on %s[%d]@%d dead-lettered after %d attempt(s): %s",
            key,
            event.topic,
            event.partition,
            event.offset,
            attempts,
            exc,
        )
        self._publish_dead_letter(event, type(exc).__name__, str(exc), attempts)
        try:
            with Session(self.engine) as session, session.begin():
                session.add(self._marker(event, key, "dead_lettered"))
        except IntegrityError:
            pass
        EVENTS_HANDLED.labels(self.group_id, event.topic, "dead_lettered").inc()

    def _publish_dead_letter(
        self, event: ReceivedEvent, error_type: str, error: str, attempts: int
    ) -> None:
        letter = events_pb2.DeadLetter(
            source_topic=event.topic,
            source_partition=event.partition,
            source_offset=event.offset,
            consumer_group=self.group_id,
            error_type=error_type,
            error=error[:4000],
            attempts=attempts,
            original_key=event.key or b"",
            original_value=event.value,
            original_headers={k: v.decode(errors="replace") for k, v in event.headers.items()},
        )
        letter.failed_at.FromDatetime(utcnow())
        headers = [
            ("content-type", b"application/x-protobuf; messageType=posttrain.v1.DeadLetter"),
            ("error-type", error_type.encode()),
        ]
        self.producer.send_raw(
            dlq_topic(event.topic), event.key, letter.SerializeToString(), headers
        )


class _AlreadyProcessed(Exception):
    pass


def processed_count(engine: Engine, group_id: str) -> int:
    with Session(engine) as session:
        return (
            session.scalar(
                sa.select(sa.func.count()).where(ProcessedEvent.consumer_group == group_id)
            )
            or 0
        )
