"""The transactional outbox and its relay, against the real broker."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from conftest import drain, run_until
from sqlalchemy.orm import Session

from posttrain.events import EventConsumer, OutboxEvent, OutboxRelay, add_to_outbox, topics
from posttrain.v1 import events_pb2


def _stage(bus, n: int, topic: str) -> list[str]:
    """n outbox rows for `topic`, committed in one transaction."""
    ids = []
    with Session(bus.engine) as session, session.begin():
        for i in range(n):
            env = add_to_outbox(
                session,
                topics.DATASET_REGISTERED,
                events_pb2.DatasetRegistered(dataset="d", version=f"v{i}"),
                producer="test",
                aggregate_id="d",
            )
            ids.append(env.event_id)
    # The relay publishes to the row's topic; point these rows at the test's topic.
    with bus.engine.begin() as conn:
        conn.execute(sa.update(OutboxEvent).values(topic=topic))
    return ids


def _pending(bus) -> int:
    with bus.engine.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).where(OutboxEvent.published_at.is_(None)))


def _collect(bus, want: int) -> list[str]:
    got: list[str] = []

    def handler(event, ctx):
        got.append(event.envelope().event_id)

    consumer = EventConsumer(
        bus.kafka,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        handlers={bus.topic: handler},
        engine=bus.engine,
        producer=bus.producer,
    )
    try:
        run_until(consumer, lambda: len(got) >= want)
        drain(consumer)
    finally:
        consumer.close()
    return got


def test_rows_staged_before_a_relay_restart_are_published_after_it(bus):
    first = OutboxRelay(bus.engine, bus.producer, poll_interval_s=0.05).start()
    first.stop()  # the relay goes down ...
    ids = _stage(bus, 5, bus.topic)  # ... while the service keeps committing
    assert _pending(bus) == 5
    second = OutboxRelay(bus.engine, bus.producer, poll_interval_s=0.05).start()
    try:
        second.wait_idle(timeout_s=30)
    finally:
        second.stop()
    assert _pending(bus) == 0
    assert sorted(_collect(bus, 5)) == sorted(ids)


def test_republish_after_crash_between_send_and_mark_is_deduped(bus):
    ids = _stage(bus, 3, bus.topic)
    relay = OutboxRelay(bus.engine, bus.producer)
    assert relay.publish_pending() == 3
    # A crash right after sending but before marking: the rows look pending again.
    with bus.engine.begin() as conn:
        conn.execute(sa.update(OutboxEvent).values(published_at=None))
    assert relay.publish_pending() == 3
    got = _collect(bus, 3)
    assert sorted(got) == sorted(ids)  # 6 records on the topic, 3 handled


def test_nothing_is_staged_when_the_transaction_rolls_back(bus):
    try:
        with Session(bus.engine) as session, session.begin():
            add_to_outbox(
                session,
                topics.DATASET_REGISTERED,
                events_pb2.DatasetRegistered(dataset="d"),
                producer="test",
                aggregate_id="d",
            )
            raise RuntimeError("the state change failed")
    except RuntimeError:
        pass
    assert _pending(bus) == 0
