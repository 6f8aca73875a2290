"""BufferedEventPublisher: inference.logged and feedback.recorded straight to Kafka.

No outbox: the database row of the request is the record; these events are copies for
other consumers, and a request must never wait for, or fail because of, the broker.
Calling the publisher only puts an envelope in a bounded buffer; one thread sends them in
batches. While the broker is away the buffer holds them (the oldest are dropped beyond
`capacity`, counted and logged) and the thread reconnects with capped backoff. Events
keep their occurred_at from when they were handed over.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from google.protobuf.message import Message
from prometheus_client import Counter, Gauge

from posttrain.config import KafkaSettings
from posttrain.events import EventProducer, encode, make_envelope
from posttrain.v1 import events_pb2

log = logging.getLogger(__name__)

DROPPED = Counter(
    "posttrain_gateway_events_dropped_total", "events dropped: buffer full while Kafka was away"
)
PUBLISHED = Counter("posttrain_gateway_events_published_total", "events published", ["topic"])
BUFFERED = Gauge("posttrain_gateway_events_buffered", "events waiting to be published")


class BufferedEventPublisher:
    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        producer_name: str,
        capacity: int = 10000,
        batch_size: int = 500,
        max_backoff_s: float = 15.0,
        make_producer: Callable[[], EventProducer] | None = None,
    ) -> None:
        self.producer_name = producer_name
        self.capacity = max(1, capacity)
        self.batch_size = batch_size
        self.max_backoff_s = max_backoff_s
        self._make_producer = make_producer or (
            lambda: EventProducer(kafka, producer_name=producer_name)
        )
        self._buffer: collections.deque[events_pb2.Envelope] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: EventProducer | None = None
        self.dropped = 0
        self.published = 0

    def __call__(self, event_type: str, payload: Message, aggregate_id: str) -> None:
        env = make_envelope(
            event_type, payload, producer=self.producer_name, aggregate_id=aggregate_id
        )
        with self._lock:
            if len(self._buffer) >= self.capacity:
                self._buffer.popleft()
                self.dropped += 1
                DROPPED.inc()
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("event buffer full: %d events dropped so far", self.dropped)
            self._buffer.append(env)
            BUFFERED.set(len(self._buffer))
        self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    def start(self) -> BufferedEventPublisher:
        self._thread = threading.Thread(target=self._run, name="gateway-events", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Send what is buffered (for up to timeout_s), then close."""
        deadline = time.monotonic() + timeout_s
        while self.pending() and time.monotonic() < deadline and self._producer is not None:
            self._wake.set()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._close_producer()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            while self.pending() and not self._stop.is_set():
                try:
                    self._send_batch()
                    backoff = 0.5
                except Exception as exc:  # noqa: BLE001 - the broker is away: keep them
                    log.warning(
                        "publishing %d buffered events failed (%s); retrying in %.1fs",
                        self.pending(),
                        exc,
                        backoff,
                    )
                    self._close_producer()
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.max_backoff_s)

    def _send_batch(self) -> None:
        if self._producer is None:
            self._producer = self._make_producer()
        with self._lock:
            batch = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
        try:
            futures = [self._producer.send_raw(e.event_type, *encode(e), wait=False) for e in batch]
            self._producer.flush()
            for future in futures:
                future.get(timeout=30)
        except BaseException:
            with self._lock:  # back in front, in order; duplicates are deduped by event id
                self._buffer.extendleft(reversed(batch))
                while len(self._buffer) > self.capacity:
                    self._buffer.popleft()
                    self.dropped += 1
                    DROPPED.inc()
            raise
        self.published += len(batch)
        for env in batch:
            PUBLISHED.labels(env.event_type).inc()
        with self._lock:
            BUFFERED.set(len(self._buffer))

    def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout_s=2.0)
            except Exception:  # noqa: BLE001
                log.debug("closing the event producer failed", exc_info=True)
