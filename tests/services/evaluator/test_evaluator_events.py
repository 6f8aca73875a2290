"""The evaluator's Kafka side against the real broker, on SQLite and PostgreSQL (one
consumer group per backend, module-scoped `live`): model.registered in, evaluation.completed
out through the outbox, the dead-letter topic; and the registry's core on the other end,
taking the verdict and allowing (or refusing) promotion to production.

Topics are shared by the whole test session: every assertion picks its own records by
event id or model version id.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from evaluator_helpers import outbox, wait_for
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "libs" / "registry"))

from registry_factories import Recorder, add_base, completed, promote, uid  # noqa: E402
from registry_factories import migrate as migrate_registry  # noqa: E402

from posttrain.db import create_db_engine, session_scope  # noqa: E402
from posttrain.evaluator.tables import ReportRow  # noqa: E402
from posttrain.events import EventProducer, decode, make_envelope, topics, unpack  # noqa: E402
from posttrain.events.tables import OutboxEvent, ProcessedEvent  # noqa: E402
from posttrain.registry import gate, versions  # noqa: E402
from posttrain.registry.errors import GateNotPassed  # noqa: E402
from posttrain.v1 import common_pb2, events_pb2  # noqa: E402


def read_topic(kafka, topic: str, key: bytes) -> list:
    """Records of `topic` with this key, up to the topic's current end."""
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        found: list = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for batch in consumer.poll(timeout_ms=300).values():
                found += [r for r in batch if r.key == key]
        return found
    finally:
        consumer.close()


def publish(live, topic: str, payload, *, key: str, event_id: str | None = None):
    env = make_envelope(topic, payload, producer="registry", aggregate_id=key, event_id=event_id)
    with EventProducer(live.kafka, producer_name="registry") as producer:
        producer.send_envelope(topic, env)
    return env


def processed(live, event_id: str) -> str | None:
    with Session(live.engine) as session:
        row = session.get(
            ProcessedEvent, {"consumer_group": live.runtime.group_id, "event_id": event_id}
        )
        return row.outcome if row else None


def relayed(live) -> bool:
    with Session(live.engine) as session:
        return not session.scalar(
            sa.select(sa.func.count()).where(OutboxEvent.published_at.is_(None))
        )


@pytest.fixture
def registry_core(tmp_path):
    """The registry's own core and database: it registers versions from training.completed
    (announcing model.registered) and records evaluation.completed verdicts."""
    engine = migrate_registry(create_db_engine(f"sqlite:///{tmp_path / 'registry.sqlite3'}"))
    with session_scope(engine) as session:
        add_base(session)
    yield engine
    engine.dispose()


def register(registry_core, live, artifact, kind: int) -> events_pb2.ModelRegistered:
    """Register a trained version in the registry core; the model.registered it announced.
    The evaluator's stand-in registry learns the version too."""
    training = completed(name=f"bot-{uid()}", kind=kind)
    training.artifacts[0].CopyFrom(artifact.to_proto())
    announced = Recorder()
    with session_scope(registry_core) as session:
        versions.register_from_training(
            session,
            training,
            produced_by="trainer",
            emit=lambda t, p, aggregate_id: announced.events.append((t, p, aggregate_id)),
        )
    [event] = announced.of(topics.MODEL_REGISTERED)
    live.registry.add_version(event.model_version_id, artifact, kind=kind)
    return event


def evaluation_completed(live, vid: str) -> events_pb2.EvaluationCompleted:
    wait_for("the outbox relayed", lambda: relayed(live), timeout_s=30)
    [record] = read_topic(live.kafka, topics.EVALUATION_COMPLETED, vid.encode())
    return decode(record.value), unpack(decode(record.value))


def test_model_registered_twice_makes_one_report_and_the_registry_may_promote_it(
    live, artifacts, registry_core
):
    event = register(registry_core, live, artifacts.adapter, common_pb2.MODEL_KIND_ADAPTER)
    vid = event.model_version_id
    first = publish(live, topics.MODEL_REGISTERED, event, key=vid)
    publish(live, topics.MODEL_REGISTERED, event, key=vid, event_id=first.event_id)  # redelivery
    again = publish(live, topics.MODEL_REGISTERED, event, key=vid)  # announced again
    wait_for("all three handled", lambda: processed(live, again.event_id), timeout_s=120)
    assert processed(live, first.event_id) == processed(live, again.event_id) == "handled"

    with Session(live.engine) as session:
        rows = session.scalars(sa.select(ReportRow).where(ReportRow.model_version_id == vid)).all()
    [row] = rows
    assert (row.verdict, row.trigger, row.suite, row.tenant) == (
        "PASS",
        "model.registered",
        "smoke-pass",
        "acme",
    )
    assert row.requested_by == f"registry (event {first.event_id})"
    staged = [
        e for e in outbox(live.engine, topics.EVALUATION_COMPLETED) if e.model_version_id == vid
    ]
    assert [e.report_id for e in staged] == [row.id]

    envelope, completed_event = evaluation_completed(live, vid)
    assert completed_event.verdict == common_pb2.GATE_VERDICT_PASS
    assert (completed_event.report_id, completed_event.suite) == (row.id, "smoke-pass")
    assert completed_event.report.uri == row.artifact["uri"]
    assert envelope.causation_id == first.event_id  # follows the event that caused it
    assert envelope.correlation_id == first.correlation_id

    # The registry records the verdict, and the version may now go to production.
    with session_scope(registry_core) as session:
        gate.record_evaluation(session, completed_event, actor="evaluator")
    change = promote(registry_core, vid, use_case="support")
    assert change.changed and change.alias.row.model_version_id == vid


def test_a_model_that_cannot_be_loaded_fails_the_gate_end_to_end(live, artifacts, registry_core):
    event = register(registry_core, live, artifacts.broken, common_pb2.MODEL_KIND_MERGED)
    vid = event.model_version_id
    env = publish(live, topics.MODEL_REGISTERED, event, key=vid)
    wait_for("the event handled", lambda: processed(live, env.event_id), timeout_s=120)
    assert processed(live, env.event_id) == "handled"  # a verdict, not a dead letter

    _, completed_event = evaluation_completed(live, vid)
    assert completed_event.verdict == common_pb2.GATE_VERDICT_FAIL
    [reason] = completed_event.reasons
    assert reason.startswith("model could not be loaded: ")

    with session_scope(registry_core) as session:
        gate.record_evaluation(session, completed_event, actor="evaluator")
    with pytest.raises(GateNotPassed, match="model could not be loaded"):
        promote(registry_core, vid, use_case="support")


def test_events_that_do_not_describe_a_model_go_to_the_dlq(live):
    garbage = f"not an envelope {uid()}".encode()
    with EventProducer(live.kafka, producer_name="test") as producer:
        producer.send_raw(topics.MODEL_REGISTERED, b"junk", garbage, [])
    hollow = publish(
        live,
        topics.MODEL_REGISTERED,
        events_pb2.ModelRegistered(model_version_id=f"bot-{uid()}:v1", tenant="acme"),
        key="hollow",
    )
    wait_for("the hollow event handled", lambda: processed(live, hollow.event_id), timeout_s=60)
    assert processed(live, hollow.event_id) == "dead_lettered"

    def letters():
        found = {}
        for record in read_topic(live.kafka, topics.dlq_topic(topics.MODEL_REGISTERED), b"junk"):
            letter = events_pb2.DeadLetter.FromString(record.value)
            if letter.original_value == garbage:
                found["garbage"] = letter
        for record in read_topic(live.kafka, topics.dlq_topic(topics.MODEL_REGISTERED), b"hollow"):
            letter = events_pb2.DeadLetter.FromString(record.value)
            if decode(letter.original_value).event_id == hollow.event_id:
                found["hollow"] = letter
        return found if len(found) == 2 else None

    found = wait_for("both dead letters", letters, timeout_s=30)
    assert found["hollow"].error == "model.registered lacks artifacts"
    assert found["hollow"].attempts == 1 and found["hollow"].error_type == "PoisonEvent"
    assert found["garbage"].consumer_group == live.runtime.group_id
