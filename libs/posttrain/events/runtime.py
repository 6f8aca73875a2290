"""EventRuntime: the event side of one service process — topics, producer, outbox relay
and (optionally) a consumer group — started and stopped as one unit.

The broker may be down when the service starts or go away later: both loops reconnect
with capped backoff instead of dying, and nothing waiting in the outbox is lost.
"""

from __future__ import annotations

import logging
import threading

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
    ):
        self.kafka = kafka
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
                while not self._stop.is_set():
                    self.consumer.poll_once()
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
