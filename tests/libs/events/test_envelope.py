"""Envelope encoding: pure logic, no broker."""

import pytest

from posttrain.events import decode, encode, make_envelope, topics, unpack
from posttrain.events.envelope import EnvelopeError
from posttrain.v1 import events_pb2


def test_round_trip_keeps_fields_and_payload():
    payload = events_pb2.DatasetApproved(dataset="support", version="abc", approved_by="ann")
    env = make_envelope(topics.DATASET_APPROVED, payload, producer="intake", aggregate_id="support")
    key, value, headers = encode(env)
    assert key == b"support"
    assert dict(headers)["event-type"] == b"dataset.approved"
    back = decode(value)
    assert back.event_id == env.event_id and back.schema_version == 1
    assert unpack(back) == payload


def test_follow_up_keeps_correlation_and_names_its_cause():
    cause = make_envelope(
        topics.TRAINING_COMPLETED,
        events_pb2.TrainingCompleted(job_id="j1"),
        producer="trainer",
        aggregate_id="j1",
        correlation_id="change-42",
    )
    follow = make_envelope(
        topics.MODEL_REGISTERED,
        events_pb2.ModelRegistered(model_version_id="m1"),
        producer="registry",
        aggregate_id="m1",
        causation=cause,
    )
    assert follow.correlation_id == "change-42"
    assert follow.causation_id == cause.event_id


def test_wrong_payload_type_is_refused():
    with pytest.raises(TypeError, match="DatasetApproved"):
        make_envelope(
            topics.DATASET_APPROVED,
            events_pb2.DatasetRejected(),
            producer="x",
            aggregate_id="a",
        )


def test_unknown_event_type_and_garbage_are_clear_errors():
    with pytest.raises(ValueError, match="unknown event type"):
        make_envelope("no.such", events_pb2.DatasetApproved(), producer="x", aggregate_id="a")
    with pytest.raises(EnvelopeError):
        decode(b"\xff\xfe garbage")
    env = make_envelope(
        topics.DATASET_APPROVED, events_pb2.DatasetApproved(), producer="x", aggregate_id="a"
    )
    env.payload_type = "posttrain.v1.DatasetRejected"
    with pytest.raises(EnvelopeError, match="must carry"):
        unpack(env)
