"""The consumer runner against the real broker, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import sqlalchemy as sa
from conftest import drain, effects, run_until

from posttrain.events import EventConsumer, PoisonEvent, RetryPolicy, make_envelope, topics
from posttrain.events.consumer import processed_count
from posttrain.events.tables import OutboxEvent
from posttrain.v1 import events_pb2


def _approved(version: str = "v1") -> events_pb2.Envelope:
    return make_envelope(
        topics.DATASET_APPROVED,
        events_pb2.DatasetApproved(dataset="support", version=version, approved_by="ann"),
        producer="test",
        aggregate_id="support",
    )


def _record_effect(event, ctx) -> None:
    ctx.session.execute(sa.insert(effects).values(event_key=event.dedupe_key(), note="ok"))


def _consumer(bus, handler, group=None, **kw) -> EventConsumer:
    return EventConsumer(
        bus.kafka,
        group_id=group or f"g-{uuid.uuid4().hex[:8]}",
        handlers={bus.topic: handler},
        engine=bus.engine,
        producer=bus.producer,
        retry=kw.pop("retry", RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05)),
        **kw,
    )


def test_event_delivered_twice_has_one_effect(bus):
    env = _approved()
    bus.producer.send_envelope(bus.topic, env)
    bus.producer.send_envelope(bus.topic, env)  # the same event id again
    consumer = _consumer(bus, _record_effect)
    try:
        run_until(consumer, lambda: bus.effect_count() >= 1)
        drain(consumer)
    finally:
        consumer.close()
    assert bus.effect_count() == 1
    assert processed_count(bus.engine, consumer.group_id) == 1


def test_handler_crash_before_commit_is_redelivered_and_handled(bus):
    group = f"g-{uuid.uuid4().hex[:8]}"
    bus.producer.send_envelope(bus.topic, _approved())
    script = Path(__file__).with_name("crashing_consumer.py")
    proc = subprocess.run(
        [sys.executable, str(script), bus.kafka.bootstrap_servers, bus.topic, group, bus.db_url],
        timeout=120,
        capture_output=True,
    )
    assert proc.returncode == 17, proc.stderr.decode()[-2000:]
    assert bus.effect_count() == 0  # the crashed transaction left nothing behind
    consumer = _consumer(bus, _record_effect, group=group)
    try:
        run_until(consumer, lambda: bus.effect_count() == 1, timeout_s=60)
        drain(consumer)
    finally:
        consumer.close()
    assert bus.effect_count() == 1
    with bus.engine.connect() as conn:
        assert conn.scalar(sa.select(effects.c.note)) == "ok"


def test_poison_event_lands_on_dlq_with_its_error_and_consumer_goes_on(bus):
    bus.producer.send_raw(bus.topic, b"k", b"\xff\x00 not an envelope", [])
    bus.producer.send_envelope(bus.topic, _approved())

    def handler(event, ctx):
        event.payload()  # raises PoisonEvent for bytes that are no envelope
        _record_effect(event, ctx)

    consumer = _consumer(bus, handler)
    try:
        run_until(consumer, lambda: bus.effect_count() == 1)
    finally:
        consumer.close()
    [dead] = bus.read_topic(bus.topic + ".dlq", expect=1)
    letter = events_pb2.DeadLetter.FromString(dead.value)
    assert letter.source_topic == bus.topic
    assert letter.original_value == b"\xff\x00 not an envelope"
    assert letter.error_type == "PoisonEvent"
    assert "not a posttrain envelope" in letter.error
    assert letter.attempts == 1


def test_transient_failure_is_retried_then_handled(bus):
    bus.producer.send_envelope(bus.topic, _approved())
    calls = []

    def flaky(event, ctx):
        calls.append(1)
        _record_effect(event, ctx)
        if len(calls) < 3:
            raise ConnectionError("database blip")

    consumer = _consumer(bus, flaky)
    try:
        run_until(consumer, lambda: bus.effect_count() == 1)
    finally:
        consumer.close()
    assert len(calls) == 3
    assert bus.effect_count() == 1  # the failed attempts' writes were rolled back


def test_exhausted_retries_dead_letter_with_attempt_count(bus):
    bus.producer.send_envelope(bus.topic, _approved())

    def always_fails(event, ctx):
        raise RuntimeError("downstream refused")

    consumer = _consumer(bus, always_fails)
    try:
        run_until(consumer, lambda: processed_count(bus.engine, consumer.group_id) == 1)
    finally:
        consumer.close()
    [dead] = bus.read_topic(bus.topic + ".dlq", expect=1)
    letter = events_pb2.DeadLetter.FromString(dead.value)
    assert (letter.error_type, letter.error, letter.attempts) == (
        "RuntimeError",
        "downstream refused",
        3,
    )


def test_handler_can_reject_commit_effects_and_dead_letter(bus):
    bus.producer.send_envelope(bus.topic, _approved())

    def rejecting(event, ctx):
        ctx.emit(
            topics.DATASET_REJECTED,
            events_pb2.DatasetRejected(dataset="support", reason="checksum mismatch"),
            aggregate_id="support",
        )
        ctx.dead_letter("checksum mismatch")

    consumer = _consumer(bus, rejecting)
    try:
        run_until(consumer, lambda: processed_count(bus.engine, consumer.group_id) == 1)
    finally:
        consumer.close()
    with bus.engine.connect() as conn:
        rows = conn.execute(sa.select(OutboxEvent.topic, OutboxEvent.value)).all()
    assert [r.topic for r in rows] == [topics.DATASET_REJECTED]
    emitted = events_pb2.Envelope.FromString(rows[0].value)
    assert emitted.causation_id  # the follow-up names the event that caused it
    [dead] = bus.read_topic(bus.topic + ".dlq", expect=1)
    assert events_pb2.DeadLetter.FromString(dead.value).error == "checksum mismatch"


def test_events_emitted_by_a_failed_handler_are_rolled_back(bus):
    bus.producer.send_envelope(bus.topic, _approved())

    def emits_then_fails(event, ctx):
        ctx.emit(
            topics.DATASET_REJECTED,
            events_pb2.DatasetRejected(dataset="x"),
            aggregate_id="x",
        )
        raise PoisonEvent("bad")

    consumer = _consumer(bus, emits_then_fails)
    try:
        run_until(consumer, lambda: processed_count(bus.engine, consumer.group_id) == 1)
    finally:
        consumer.close()
    with bus.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(OutboxEvent)) == 0


def test_json_event_dedupes_on_its_event_id(bus):
    headers = [("content-type", b"application/json")]
    bus.producer.send_raw(bus.topic, b"d", b'{"event_id": "up-1", "dataset": "a"}', headers)
    bus.producer.send_raw(bus.topic, b"d", b'{"event_id": "up-1", "dataset": "a", "x": 1}', headers)
    seen = []

    def handler(event, ctx):
        seen.append(event.json())
        _record_effect(event, ctx)

    consumer = _consumer(bus, handler)
    try:
        run_until(consumer, lambda: bus.effect_count() == 1)
        drain(consumer)
    finally:
        consumer.close()
    assert len(seen) == 1 and seen[0]["event_id"] == "up-1"
