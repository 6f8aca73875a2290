"""One correlation id per operation: events staged in an RPC or a job take the current id,
a handler's follow-up events keep the id of the event it handles (outbox rows included),
and upstream JSON events get a stable one. No broker: a SQLite outbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from posttrain.correlation import correlation_scope, current_correlation_id
from posttrain.db import apply_migrations, create_db_engine
from posttrain.events import (
    EVENTS_MIGRATIONS,
    HandlerContext,
    OutboxEvent,
    ReceivedEvent,
    decode,
    encode,
    make_envelope,
    topics,
)
from posttrain.v1 import events_pb2


def _completed(**kw) -> events_pb2.Envelope:
    return make_envelope(
        topics.TRAINING_COMPLETED,
        events_pb2.TrainingCompleted(job_id="j1"),
        producer="trainer",
        aggregate_id="j1",
        **kw,
    )


def _received(value: bytes, headers: dict[str, bytes]) -> ReceivedEvent:
    return ReceivedEvent("t", 0, 7, b"k", value, headers)


@pytest.fixture
def session(tmp_path: Path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'events.sqlite3'}")
    apply_migrations(engine, "events", EVENTS_MIGRATIONS)
    with Session(engine) as session, session.begin():
        yield session
    engine.dispose()


def test_an_event_staged_in_an_operation_takes_its_correlation_id():
    with correlation_scope("rpc-upload-1"):
        assert _completed().correlation_id == "rpc-upload-1"
        assert _completed(correlation_id="explicit").correlation_id == "explicit"
        cause = _completed(correlation_id="change-42")
        assert _completed(causation=cause).correlation_id == "change-42"  # the cause wins
    outside = {_completed().correlation_id for _ in range(2)}
    assert len(outside) == 2  # no operation: a fresh id per event


def test_a_handlers_follow_up_keeps_the_correlation_id_of_the_event(session):
    cause = _completed(correlation_id="change-42")
    _, value, headers = encode(cause)
    ctx = HandlerContext(session, _received(value, dict(headers)), producer_name="registry")
    with correlation_scope("something-else"):  # the event's own id wins over the context
        staged = ctx.emit(
            topics.MODEL_REGISTERED,
            events_pb2.ModelRegistered(model_version_id="m1"),
            aggregate_id="m1",
        )
    session.flush()
    (row,) = session.query(OutboxEvent).all()
    stored = decode(row.value)
    assert (stored.correlation_id, stored.causation_id) == ("change-42", cause.event_id)
    assert stored.event_id == staged.event_id


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"correlation-id": b"crm-run-9"}, "crm-run-9"),  # the upstream's own id
        ({}, "crm-export-001"),  # else its event id: a redelivery keeps the same one
    ],
)
def test_upstream_json_events_get_a_stable_correlation_id(session, headers, expected):
    value = json.dumps({"event_id": "crm-export-001", "dataset": "faq"}).encode()
    event = _received(value, {"content-type": b"application/json", **headers})
    assert event.correlation_id() == expected
    ctx = HandlerContext(session, event, producer_name="intake")
    staged = ctx.emit(
        topics.DATASET_REJECTED, events_pb2.DatasetRejected(dataset="faq"), aggregate_id="faq"
    )
    assert staged.correlation_id == expected


def test_unreadable_records_still_get_a_valid_stable_id():
    event = _received(b"\xff not an envelope", {})
    first, second = event.correlation_id(), event.correlation_id()
    assert first == second and first.startswith("sha256:")
    assert current_correlation_id() is None
