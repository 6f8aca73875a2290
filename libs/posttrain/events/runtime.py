"""EventRuntime: the event side of one service process — topics, producer, outbox relay
and (optionally) a consumer group — started and stopped as one unit.

The broker may be down when the service starts or go away later: both loops reconnect
with capped backoff instead of dying, and nothing waiting in the outbox is lost.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import Engine

from posttrain.config import KafkaSettings
from posttrain.db import apply_migrations
from posttrain.events.admin import ensure_topics
from posttrain.events.consumer import EventConsumer, Handler, RetryPolicy
from posttrain.events.outbox import OutboxRelay
from posttrain.events.producer import EventProducer
from posttrain.events.tables import EVENTS_MIGRATIONS
from posttrain.events.topics import all_topics, dlq_topic

log = logging.getLogger(__name__)


class EventRuntime:
    def __init__(
        self,
        kafka: KafkaSettings,
        engine: Engine,
        *,
        service_name: str,
        handlers: dict[str, Handler] | None = None,
        group_id: str | None = None,
        retry: RetryPolicy | None = None,
        partitions: int = 2,
        unassigned_stall_s: float = 30.0,
    ):
        self.kafka = kafka
        self.unassigned_stall_s = unassigned_stall_s
        self.engine = engine
        self.service_name = service_name
        self.handlers = dict(handlers or {})
        self.group_id = group_id or service_name
        self.retry = retry
        self.partitions = partitions
        self.producer: EventProducer | None = None
        self.relay: OutboxRelay | None = None
        self.consumer: EventConsumer | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ready = threading.Event()  # set once topics exist and the relay runs

    def start(self) -> EventRuntime:
        apply_migrations(self.engine, "events", EVENTS_MIGRATIONS)
        thread = threading.Thread(target=self._run, name=f"{self.service_name}-events", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                # Every known topic plus any custom ones this service consumes, with DLQs.
                topics = set(all_topics()) | set(self.handlers)
                topics |= {dlq_topic(t) for t in self.handlers}
                ensure_topics(self.kafka, sorted(topics), partitions=self.partitions)
                self.producer = EventProducer(self.kafka, producer_name=self.service_name)
                self.relay = OutboxRelay(self.engine, self.producer).start()
                self.ready.set()
                if self.handlers:
                    self._consume()
                else:
                    self._stop.wait()
                return
            except Exception:  # noqa: BLE001 - broker down at start: retry, don't die
                log.exception(
                    "event runtime of %s failed; retrying in %.1fs", self.service_name, backoff
                )
                self._teardown()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 15.0)

    def _consume(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self.consumer = EventConsumer(
                    self.kafka,
                    group_id=self.group_id,
                    handlers=self.handlers,
                    engine=self.engine,
                    producer=self.producer,
                    retry=self.retry,
                )
                watchdog = _AssignmentWatchdog(self.unassigned_stall_s)
                while not self._stop.is_set():
                    self.consumer.poll_once()
                    watchdog.check(self.consumer.assignment(), self.group_id)
                    backoff = 0.5
            except Exception:  # noqa: BLE001 - reconnect after broker trouble
                log.exception("consumer %s failed; reconnecting in %.1fs", self.group_id, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 15.0)
            finally:
                if self.consumer is not None:
                    self.consumer.close()
                    self.consumer = None

    def _teardown(self) -> None:
        if self.relay is not None:
            self.relay.stop()
            self.relay = None
        if self.producer is not None:
            try:
                self.producer.close()
            except Exception:  # noqa: BLE001
                log.warning("closing producer failed", exc_info=True)
            self.producer = None

    def stop(self, timeout_s: float = 15.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s)
        self._teardown()


class ConsumerStalled(RuntimeError):
    """A consumer that had partitions has had none for too long."""


class _AssignmentWatchdog:
    """Seen after a broker restart (Tansu, kafka-python 3): the consumer rejoins its group
    under its old member id, is elected leader, and never gets an assignment back; it
    polls for ever and consumes nothing. A consumer that had partitions and has had none
    for `stall_s` raises ConsumerStalled, and the runtime makes a new one (a new member).
    One that never had any (more members than partitions) is left alone: no churn."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self.had_partitions = False
        self.empty_since: float | None = None

    def check(self, assignment: set, group_id: str) -> None:
        if assignment:
            self.had_partitions, self.empty_since = True, None
            return
        if not self.had_partitions or self.stall_s <= 0:
            return
        now = time.monotonic()
        if self.empty_since is None:
            self.empty_since = now
        elif now - self.empty_since > self.stall_s:
            raise ConsumerStalled(
                f"consumer of group {group_id} has had no partitions for {self.stall_s:.0f}s "
                "after it had some: making a new one"
            )
