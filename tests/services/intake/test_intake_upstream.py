"""Upstream `data.approved` events through a real consumer group on the real broker."""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid

import pytest
import sqlalchemy as sa
from conftest import SAMPLE_ROWS, jsonl

from posttrain.config import KafkaSettings
from posttrain.events import (
    EventConsumer,
    EventProducer,
    RetryPolicy,
    encode,
    ensure_topics,
    make_envelope,
    topics,
    unpack,
)
from posttrain.events.consumer import processed_count
from posttrain.intake import handle_data_approved
from posttrain.intake.tables import DatasetVersionRow
from posttrain.v1 import common_pb2, events_pb2

JSON = [("content-type", b"application/json")]


@pytest.fixture
def upstream(intake, stack):
    """A fresh data.approved-like topic, a producer and a consumer running the handler."""
    kafka = KafkaSettings(
        bootstrap_servers=stack.kafka_bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=1000
    )
    topic = f"data.approved.{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka, [topic, topic + ".dlq"], partitions=1)
    producer = EventProducer(kafka, producer_name="upstream-test")
    consumer = EventConsumer(
        kafka,
        group_id=f"intake-{uuid.uuid4().hex[:6]}",
        handlers={topic: lambda event, ctx: handle_data_approved(intake.catalog, event, ctx)},
        engine=intake.engine,
        producer=producer,
        retry=RetryPolicy(max_attempts=2, base_delay_s=0.01),
    )

    class Upstream:
        def put_object(self, data: bytes) -> str:
            key = f"incoming/{uuid.uuid4().hex}.jsonl"
            intake.store.client.put_object(intake.store.bucket, key, io.BytesIO(data), len(data))
            return f"s3://{intake.store.bucket}/{key}"

        def send(self, event: dict | bytes, headers=JSON) -> None:
            value = event if isinstance(event, bytes) else json.dumps(event).encode()
            producer.send_raw(topic, b"k", value, headers)

        def consume(self, expect: int, timeout_s: float = 40.0) -> None:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                consumer.poll_once(timeout_ms=300)
                if processed_count(intake.engine, consumer.group_id) >= expect:
                    return
            raise AssertionError(f"fewer than {expect} events handled in {timeout_s}s")

    yield Upstream()
    consumer.close()
    producer.close()


def _event(uri: str, data: bytes, **overrides) -> dict:
    event = {
        "event_id": uuid.uuid4().hex,
        "dataset": "support-kb",
        "uri": uri,
        "format": "jsonl",
        "schema": "chat",
        "sha256": hashlib.sha256(data).hexdigest(),
        "approved_by": "dana@upstream",
        "approved_at": "2026-11-29T10:00:00Z",
        "source": "crm-export",
        "labels": {"team": "support"},
    }
    event.update(overrides)
    return event


def _versions(intake) -> list[DatasetVersionRow]:
    from sqlalchemy.orm import Session

    with Session(intake.engine) as session:
        return session.scalars(sa.select(DatasetVersionRow)).all()


def test_announced_data_becomes_an_approved_version_once_even_if_replayed(intake, upstream):
    data = jsonl(SAMPLE_ROWS)
    event = _event(upstream.put_object(data), data)
    upstream.send(event)
    upstream.send(event)  # replay: same event_id
    upstream.consume(expect=1)
    time.sleep(1)
    upstream.consume(expect=1)
    [version] = _versions(intake)
    assert version.state == "APPROVED"
    assert version.reviewed_by == "dana@upstream"
    assert version.source == "crm-export" and version.source_event_id == event["event_id"]
    assert version.labels == {"team": "support"}
    kinds = [t for t, _ in intake.outbox()]
    assert kinds == [topics.DATASET_REGISTERED, topics.DATASET_APPROVED]
    registered = unpack(intake.outbox()[0][1])
    assert registered.state == common_pb2.APPROVAL_STATE_APPROVED


@pytest.mark.parametrize(
    "breakage, reason",
    [
        (lambda e: e.pop("sha256"), "'sha256' is a required property"),
        (lambda e: e.update(format="xlsx"), "format"),
        (lambda e: e.update(approved_at="yesterday"), "approved_at"),
        (lambda e: e.update(sha256="0" * 64), "checksum mismatch"),
        (lambda e: e.update(uri="s3://missing-bucket-xyz/none.jsonl"), "unreadable"),
    ],
    ids=["missing-field", "bad-format", "bad-time", "checksum", "missing-object"],
)
def test_bad_announcements_are_rejected_and_dead_lettered(intake, upstream, breakage, reason):
    data = jsonl(SAMPLE_ROWS)
    event = _event(upstream.put_object(data), data)
    breakage(event)
    upstream.send(event)
    upstream.consume(expect=1)
    assert _versions(intake) == []
    assert intake.dataset_objects() == []
    [(kind, envelope)] = intake.outbox()
    assert kind == topics.DATASET_REJECTED
    rejected = unpack(envelope)
    assert reason in rejected.reason
    assert rejected.rejected_by == "intake"


def test_invalid_rows_and_garbage_are_rejected_and_the_consumer_goes_on(intake, upstream):
    bad = b'{"messages": [{"role": "user", "content": "no answer"}]}\n'
    upstream.send(_event(upstream.put_object(bad), bad))
    upstream.send(b"\x00\xff definitely not json")
    good = jsonl(SAMPLE_ROWS)
    upstream.send(_event(upstream.put_object(good), good))
    upstream.consume(expect=3)
    assert len(_versions(intake)) == 1
    rejected = [unpack(e) for t, e in intake.outbox() if t == topics.DATASET_REJECTED]
    assert len(rejected) == 2
    assert any("row 1" in r.reason or "invalid row" in r.reason for r in rejected)
    assert any("not valid JSON" in r.reason for r in rejected)


def test_protobuf_form_of_the_contract_is_accepted(intake, upstream):
    data = jsonl(SAMPLE_ROWS[:5])
    payload = events_pb2.DataApproved(
        event_id="pb-1",
        dataset="from-proto",
        uri=upstream.put_object(data),
        format="jsonl",
        schema="chat",
        sha256=hashlib.sha256(data).hexdigest(),
        approved_by="pat",
        source="warehouse",
    )
    payload.approved_at.GetCurrentTime()
    env = make_envelope(
        topics.DATA_APPROVED, payload, producer="warehouse", aggregate_id="from-proto"
    )
    _, value, headers = encode(env)
    upstream.send(value, headers=headers)
    upstream.consume(expect=1)
    [version] = _versions(intake)
    assert (version.state, version.reviewed_by, version.source) == ("APPROVED", "pat", "warehouse")
