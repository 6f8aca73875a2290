"""Load, bounded and on loopback only (slow: CI runs them). No timing assertions: the
numbers are printed, and speed targets live in benchmarks/load_gateway.py.

- The gateway: several clients for a few seconds, each request for a tenant picked at
  random, every tenant's own LoRA adapter on one shared base in the real Triton: zero
  errors, and every request accounted for (answered, and recorded once by the gateway
  under its tenant).
- The event bus: a burst of 10,000 events on one topic, two consumers of one group with
  a handler that writes one effect row per event: the group's lag drains to zero, every
  event has exactly one effect, and a replay of some of them adds none.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from kafka import KafkaConsumer, TopicPartition

from posttrain.config import KafkaSettings
from posttrain.db import apply_migrations, create_db_engine
from posttrain.events import (
    EVENTS_MIGRATIONS,
    EventConsumer,
    EventProducer,
    encode,
    ensure_topics,
    make_envelope,
    topics,
)
from posttrain.v1 import events_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

from load_gateway import gateway_settings, mixed_gateway, recorded_by_tenant, run_load  # noqa: E402

pytestmark = pytest.mark.slow

TENANTS = ["acme", "globex", "initech"]
BURST = 10_000


def test_gateway_under_concurrent_mixed_adapter_load_has_no_errors_and_full_accounting(
    stack, triton, tmp_path: Path
) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'gateway.sqlite3'}")
    settings = gateway_settings(
        stack.s3_settings(bucket=f"load-{uuid.uuid4().hex[:8]}"),
        triton.triton_grpc_url,
        triton.triton_model_repository,
        tmp_path / "cache",
        clients=4,
    )
    try:
        with mixed_gateway(settings, engine, tmp_path, TENANTS) as gateway:
            # One shared base: the tenants differ by adapter only.
            assert len(gateway.triton_models) == 1
            assert len(set(gateway.lora.values())) == len(TENANTS)
            result = run_load(gateway, clients=4, seconds=8, max_tokens=4)
            recorded = recorded_by_tenant(gateway)
    finally:
        engine.dispose()
    print("\n" + result.report())
    assert not result.errors, f"errors under load: {dict(result.errors)}"
    assert result.sent == result.ok > 0
    assert set(result.ok_by_tenant) == set(TENANTS)  # every tenant's adapter was served
    assert recorded == dict(result.ok_by_tenant)  # one inference row per answer


def group_lag(kafka: KafkaSettings, group: str, topic: str, produced: int) -> int:
    """Records produced to the (fresh) topic minus the group's committed offsets. Not
    from ListOffsets: Tansu answers LATEST with the base offset of the last batch, not
    the high watermark (seen 2026-11-29), so end_offsets undercounts."""
    consumer = KafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return produced - sum(consumer.committed(tp) or 0 for tp in tps)
    finally:
        consumer.close()


def test_a_burst_of_10k_events_drains_with_one_effect_each(stack, postgres_server_url: str) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=stack.kafka_bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=1000
    )
    topic = f"burst.{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka, [topic, topics.dlq_topic(topic)], partitions=2)
    engine = create_db_engine(postgres_server_url)
    apply_migrations(engine, "events", EVENTS_MIGRATIONS)
    effects = sa.Table(
        f"burst_effects_{uuid.uuid4().hex[:8]}",
        sa.MetaData(),
        sa.Column("request_id", sa.String(64)),  # no unique key: a double effect must show
        sa.Column("consumer", sa.String(20)),
    )
    effects.create(engine)
    group = f"burst-{uuid.uuid4().hex[:6]}"
    producer = EventProducer(kafka, producer_name="burst")

    def handler_for(name: str):
        def handle(event, ctx) -> None:
            payload = event.payload()
            ctx.session.execute(
                effects.insert().values(request_id=payload.request_id, consumer=name)
            )

        return handle

    consumers = [
        EventConsumer(
            kafka,
            group_id=group,
            handlers={topic: handler_for(f"c{i}")},
            engine=engine,
            producer=producer,
            max_poll_records=500,
        )
        for i in range(2)
    ]
    threads = [c.start() for c in consumers]
    try:
        records = []
        for i in range(BURST):
            env = make_envelope(
                topics.INFERENCE_LOGGED,
                events_pb2.InferenceLogged(request_id=f"r{i:05d}", tenant="acme"),
                producer="burst",
                aggregate_id=f"k{i % 64}",
            )
            records.append(encode(env))
        began = time.monotonic()
        for key, value, headers in records:
            producer.send_raw(topic, key, value, headers, wait=False)
        producer.flush()
        produced_s = time.monotonic() - began

        def counts() -> tuple[int, int]:
            with engine.connect() as conn:
                total = conn.execute(sa.select(sa.func.count()).select_from(effects)).scalar_one()
                distinct = conn.execute(
                    sa.select(sa.func.count(sa.distinct(effects.c.request_id)))
                ).scalar_one()
            return total, distinct

        deadline = time.monotonic() + 240
        while counts()[0] < BURST:
            assert time.monotonic() < deadline, f"only {counts()[0]} of {BURST} handled in 240s"
            time.sleep(0.5)
        drained_s = time.monotonic() - began
        lag_deadline = time.monotonic() + 30
        while (lag := group_lag(kafka, group, topic, BURST)) != 0:
            assert time.monotonic() < lag_deadline, f"lag stuck at {lag}"
            time.sleep(0.5)

        # A replay of the first 500 (a producer retry, a rewound upstream): no new effect.
        for key, value, headers in records[:500]:
            producer.send_raw(topic, key, value, headers, wait=False)
        producer.flush()
        replay_deadline = time.monotonic() + 60
        while group_lag(kafka, group, topic, BURST + 500) != 0:
            assert time.monotonic() < replay_deadline, "the replay did not drain"
            time.sleep(0.5)
        total, distinct = counts()
        with engine.connect() as conn:
            by_consumer = dict(
                conn.execute(
                    sa.select(effects.c.consumer, sa.func.count()).group_by(effects.c.consumer)
                ).all()
            )
    finally:
        for consumer in consumers:
            consumer.stop()
        for thread in threads:
            thread.join(30)
        producer.close()
        effects.drop(engine)
        engine.dispose()
    print(
        f"\n{BURST} events: produced in {produced_s:.1f}s ({BURST / produced_s:.0f}/s), "
        f"all handled {drained_s:.1f}s after the first send ({BURST / drained_s:.0f}/s), "
        f"lag 0; by consumer {by_consumer}; 500 replayed, effects {total}"
    )
    assert (total, distinct) == (BURST, BURST)
    assert len(by_consumer) == 2  # the group shared the partitions
