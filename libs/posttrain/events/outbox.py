"""Transactional outbox: events are rows written in the same transaction as the state
change they announce; a relay publishes them and marks them published.

A crash between the DB commit and the publish loses nothing (the row waits for the
relay); a crash between publish and mark republishes the same event id, which consumers
dedupe. Several relays may run: on PostgreSQL rows are claimed with SKIP LOCKED.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from posttrain.db import utcnow
from posttrain.events import envelope as envelopes
from posttrain.events.producer import EventProducer
from posttrain.events.tables import OutboxEvent
from posttrain.faults import crash_point
from posttrain.v1 import events_pb2

log = logging.getLogger(__name__)


def add_to_outbox(
    session: Session,
    event_type: str,
    payload: Message,
    *,
    producer: str,
    aggregate_id: str,
    correlation_id: str = "",
    causation: events_pb2.Envelope | None = None,
    event_id: str | None = None,
) -> events_pb2.Envelope:
    """Stage an event in the caller's transaction; it is published after the commit."""
    env = envelopes.make_envelope(
        event_type,
        payload,
        producer=producer,
        aggregate_id=aggregate_id,
        correlation_id=correlation_id,
        causation=causation,
        event_id=event_id,
    )
    key, value, _ = envelopes.encode(env)
    session.add(
        OutboxEvent(
            event_id=env.event_id,
            topic=event_type,
            key=key,
            value=value,
            created_at=utcnow(),
        )
    )
    return env


def outbox_emitter(session: Session, *, producer: str, correlation_id: str = ""):
    """An `emit(event_type, payload, *, aggregate_id)` that stages events in `session`'s
    transaction through add_to_outbox (the shape the service cores take)."""

    def emit(event_type: str, payload: Message, *, aggregate_id: str) -> events_pb2.Envelope:
        return add_to_outbox(
            session,
            event_type,
            payload,
            producer=producer,
            aggregate_id=aggregate_id,
            correlation_id=correlation_id,
        )

    return emit


class OutboxRelay:
    """Publishes unpublished outbox rows in insertion order, then marks them published."""

    def __init__(
        self,
        engine: Engine,
        producer: EventProducer,
        *,
        batch_size: int = 100,
        poll_interval_s: float = 0.2,
        retention: dt.timedelta = dt.timedelta(days=7),
    ):
        self.engine = engine
        self.producer = producer
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.retention = retention
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish_pending(self) -> int:
        """One pass: publish up to batch_size pending rows; returns how many."""
        with Session(self.engine) as session, session.begin():
            query = (
                sa.select(OutboxEvent)
                .where(OutboxEvent.published_at.is_(None))
                .order_by(OutboxEvent.id)
                .limit(self.batch_size)
            )
            if self.engine.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = session.scalars(query).all()
            if not rows:
                return 0
            crash_point("outbox.before_publish")  # committed state, its events not sent
            futures = [
                self.producer.send_raw(
                    row.topic,
                    row.key,
                    row.value,
                    envelopes.encode(envelopes.decode(row.value))[2],
                    wait=False,
                )
                for row in rows
            ]
            self.producer.flush()
            for fut in futures:
                fut.get(timeout=30)  # raises if any send failed: nothing is marked
            crash_point("outbox.after_publish")  # sent, not marked: sent again after restart
            now = utcnow()
            for row in rows:
                row.published_at = now
            return len(rows)

    def purge_published(self) -> int:
        cutoff = utcnow() - self.retention
        with self.engine.begin() as conn:
            result = conn.execute(sa.delete(OutboxEvent).where(OutboxEvent.published_at < cutoff))
            return result.rowcount or 0

    def run(self) -> None:
        """Relay until stop(); errors (broker down) are logged and retried with backoff."""
        backoff = self.poll_interval_s
        while not self._stop.is_set():
            try:
                n = self.publish_pending()
                backoff = self.poll_interval_s
                if n == self.batch_size:
                    continue  # more waiting: don't sleep
            except Exception:  # noqa: BLE001 - keep relaying; the rows stay pending
                log.exception("outbox relay pass failed; retrying in %.1fs", backoff)
                backoff = min(backoff * 2, 10.0)
                # A fresh producer id: a restarted broker may have forgotten the old one
                # and refuse its writes for ever (EventProducer.reset).
                self._reset_producer()
            self._stop.wait(backoff)

    def _reset_producer(self) -> None:
        try:
            self.producer.reset()
        except Exception:  # noqa: BLE001 - broker still away: the next pass tries again
            log.warning("could not make a new producer", exc_info=True)

    def start(self) -> OutboxRelay:
        self._thread = threading.Thread(target=self.run, name="outbox-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def wait_idle(self, timeout_s: float = 30.0) -> None:
        """Block until no row is pending (tests, graceful shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with Session(self.engine) as session:
                pending = session.scalar(
                    sa.select(sa.func.count()).where(OutboxEvent.published_at.is_(None))
                )
            if not pending:
                return
            time.sleep(0.05)
        raise TimeoutError(f"outbox still has {pending} pending events after {timeout_s}s")
