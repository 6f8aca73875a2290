"""Event bus throughput and produce->handle latency: posttrain.events vs raw kafka-python.

Both paths run in the same process against the same broker: N events of ~1 KB, the
consumer started first, the producer sending as fast as acks=all allows. The library
path adds what the raw one lacks: envelope encoding, a dedupe lookup and a DB
transaction per event (SQLite here), and an offset commit per event.

    python benchmarks/bench_events.py [--events 2000] [--db-url URL]

Uses POSTTRAIN_KAFKA_BOOTSTRAP_SERVERS if set, else starts a local broker on free ports.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer

from posttrain.config import KafkaSettings
from posttrain.db import apply_migrations, create_db_engine
from posttrain.events import (
    EVENTS_MIGRATIONS,
    EventConsumer,
    EventProducer,
    ensure_topics,
    make_envelope,
    topics,
)
from posttrain.stack import LocalStack, StackPorts
from posttrain.v1 import events_pb2

PAD = "x" * 900  # ~1 KB events


def _percentiles(latencies_ms: list[float]) -> tuple[float, float]:
    qs = statistics.quantiles(latencies_ms, n=100)
    return qs[49], qs[98]


def bench_raw(kafka: KafkaSettings, n: int) -> dict:
    topic = f"bench.raw.{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka, [topic], partitions=2)
    latencies: list[float] = []
    done = threading.Event()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=f"raw-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    while not consumer.assignment():
        consumer.poll(timeout_ms=200)

    def consume() -> None:
        while len(latencies) < n:
            for records in consumer.poll(timeout_ms=200).values():
                for r in records:
                    sent = float(r.value.split(b"|", 1)[0])
                    latencies.append((time.time() - sent) * 1000)
                consumer.commit()
        done.set()

    thread = threading.Thread(target=consume)
    thread.start()
    producer = KafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers, acks="all", enable_idempotence=True, linger_ms=5
    )
    start = time.perf_counter()
    for i in range(n):
        producer.send(topic, key=str(i % 16).encode(), value=f"{time.time()}|{PAD}".encode())
    producer.flush()
    done.wait(300)
    elapsed = time.perf_counter() - start
    thread.join()
    producer.close()
    consumer.close()
    return {"events_per_s": n / elapsed, "latencies": latencies}


def bench_library(kafka: KafkaSettings, n: int, db_url: str) -> dict:
    topic = f"bench.lib.{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka, [topic, topic + ".dlq"], partitions=2)
    engine = create_db_engine(db_url)
    apply_migrations(engine, "events", EVENTS_MIGRATIONS)
    latencies: list[float] = []

    def handler(event, ctx) -> None:
        env = event.envelope()
        latencies.append((time.time() - env.occurred_at.ToDatetime().timestamp()) * 1000)

    producer = EventProducer(kafka, producer_name="bench")
    consumer = EventConsumer(
        kafka,
        group_id=f"lib-{uuid.uuid4().hex[:6]}",
        handlers={topic: handler},
        engine=engine,
        producer=producer,
    )
    while not consumer.assignment():
        consumer.poll_once(timeout_ms=200)
    done = threading.Event()

    def consume() -> None:
        while len(latencies) < n:
            consumer.poll_once(timeout_ms=200)
        done.set()

    thread = threading.Thread(target=consume)
    thread.start()
    start = time.perf_counter()
    for i in range(n):
        env = make_envelope(
            topics.DATASET_REGISTERED,
            events_pb2.DatasetRegistered(dataset=PAD, version=str(i)),
            producer="bench",
            aggregate_id=str(i % 16),
        )
        producer.send_envelope(topic, env, wait=False)
    producer.flush()
    done.wait(600)
    elapsed = time.perf_counter() - start
    thread.join()
    consumer.close()
    producer.close()
    engine.dispose()
    return {"events_per_s": n / elapsed, "latencies": latencies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--db-url", default="", help="default: SQLite in a temp dir")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        stack = None
        bootstrap = os.environ.get("POSTTRAIN_KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            stack = LocalStack(state_dir=Path(tmp) / "stack", ports=StackPorts.free())
            stack.up(["kafka"])
            bootstrap = stack.kafka_bootstrap
        try:
            kafka = KafkaSettings(bootstrap_servers=bootstrap)
            db_url = args.db_url or f"sqlite:///{tmp}/bench.sqlite3"
            raw = bench_raw(kafka, args.events)
            lib = bench_library(kafka, args.events, db_url)
        finally:
            if stack:
                stack.down()
    rp50, rp99 = _percentiles(raw["latencies"])
    lp50, lp99 = _percentiles(lib["latencies"])
    print(f"events: {args.events} x ~1 KB, broker {bootstrap}, DB {db_url.split(':')[0]}")
    print(f"{'path':<22}{'events/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'raw kafka-python':<22}{raw['events_per_s']:>10.0f}{rp50:>10.1f}{rp99:>10.1f}")
    print(f"{'posttrain.events':<22}{lib['events_per_s']:>10.0f}{lp50:>10.1f}{lp99:>10.1f}")
    print(
        f"ratio library/raw: throughput {lib['events_per_s'] / raw['events_per_s']:.2f}x, "
        f"p50 latency {lp50 / rp50:.2f}x, p99 latency {lp99 / rp99:.2f}x"
    )


if __name__ == "__main__":
    main()
