"""Helpers for event-bus tests: a fresh topic per test, a DB with the bus tables and a
test table that handlers write their effects into."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from kafka import KafkaConsumer, TopicPartition

from posttrain.config import KafkaSettings
from posttrain.db import apply_migrations, create_db_engine
from posttrain.events import EVENTS_MIGRATIONS, EventProducer, ensure_topics

effects_meta = sa.MetaData()
effects = sa.Table(
    "effects",
    effects_meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_key", sa.String(200), nullable=False),
    sa.Column("note", sa.String(200), nullable=False),
)


@dataclass
class Bus:
    kafka: KafkaSettings
    engine: sa.Engine
    producer: EventProducer
    topic: str
    db_url: str

    def effect_count(self) -> int:
        with self.engine.connect() as conn:
            return conn.scalar(sa.select(sa.func.count()).select_from(effects)) or 0

    def read_topic(self, topic: str, expect: int, timeout_s: float = 20.0) -> list:
        """All records of `topic` (no consumer group), waiting until `expect` arrived."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap_servers, enable_auto_commit=False
        )
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            deadline = time.monotonic() + timeout_s
            while not parts and time.monotonic() < deadline:
                time.sleep(0.2)
                parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in parts]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            got: list = []
            while len(got) < expect and time.monotonic() < deadline:
                for recs in consumer.poll(timeout_ms=500).values():
                    got.extend(recs)
            return got
        finally:
            consumer.close()


def kafka_settings_for(bootstrap: str) -> KafkaSettings:
    # Short session timeout: Tansu's first group join takes about half of it.
    return KafkaSettings(
        bootstrap_servers=bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=1000
    )


@pytest.fixture
def bus(stack, db_url) -> Iterator[Bus]:
    kafka = kafka_settings_for(stack.kafka_bootstrap)
    topic = f"test.{uuid.uuid4().hex[:10]}"
    ensure_topics(kafka, [topic, topic + ".dlq"], partitions=2)
    engine = create_db_engine(db_url)
    apply_migrations(engine, "events", EVENTS_MIGRATIONS)
    effects_meta.create_all(engine)
    producer = EventProducer(kafka, producer_name="test")
    try:
        yield Bus(kafka=kafka, engine=engine, producer=producer, topic=topic, db_url=db_url)
    finally:
        producer.close()
        engine.dispose()


def run_until(consumer, done: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        consumer.poll_once(timeout_ms=300)
        if done():
            return
    raise AssertionError(f"condition not reached within {timeout_s}s")


def drain(consumer, seconds: float = 2.0) -> None:
    """Keep polling a little longer, so a duplicate would have been seen."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        consumer.poll_once(timeout_ms=200)
