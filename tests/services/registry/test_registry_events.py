"""The registry's Kafka side against the real broker, on SQLite and PostgreSQL: one
consumer group per backend (module-scoped `live`), the outbox relay, the DLQ.

Topics are shared by the whole test session, so every assertion picks its own records
by event id, key or model version id.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from kafka import KafkaConsumer, TopicPartition
from registry_factories import BASE, add_base, completed, uid, verdict

from posttrain.db import session_scope
from posttrain.events import EventProducer, decode, make_envelope, topics, unpack
from posttrain.events.tables import OutboxEvent, ProcessedEvent
from posttrain.registry.tables import BaseModelRow, ModelVersionRow
from posttrain.v1 import common_pb2, events_pb2, registry_pb2


def read_topic(kafka, topic: str) -> list:
    """Every record on `topic` up to its current end (no consumer group)."""
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records: list = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def publish(live, topic: str, payload, *, producer: str, key: str, event_id: str | None = None):
    env = make_envelope(topic, payload, producer=producer, aggregate_id=key, event_id=event_id)
    with EventProducer(live.kafka, producer_name=producer) as p:
        p.send_envelope(topic, env)
    return env


def processed(live, event_id: str) -> str | None:
    with session_scope(live.service.engine) as session:
        row = session.get(
            ProcessedEvent, {"consumer_group": live.runtime.group_id, "event_id": event_id}
        )
        return row.outcome if row else None


def relayed(live) -> bool:
    with session_scope(live.service.engine) as session:
        return not session.scalar(
            sa.select(sa.func.count()).where(OutboxEvent.published_at.is_(None))
        )


def ensure_base(live) -> None:
    with session_scope(live.service.engine) as session:
        if session.get(BaseModelRow, BASE) is None:
            add_base(session)


def test_training_completed_delivered_twice_registers_one_version_and_announces_it_once(live):
    ensure_base(live)
    event = completed(name=f"bot-{uid()}")
    first = publish(live, topics.TRAINING_COMPLETED, event, producer="trainer", key=event.job_id)
    publish(  # the very same event again: the consumer's dedupe absorbs it
        live,
        topics.TRAINING_COMPLETED,
        event,
        producer="trainer",
        key=event.job_id,
        event_id=first.event_id,
    )
    # The trainer reporting the same job again under a new event id: the core absorbs it.
    again = publish(live, topics.TRAINING_COMPLETED, event, producer="trainer", key=event.job_id)
    live.wait_for("both event ids handled", lambda: processed(live, again.event_id))
    assert processed(live, first.event_id) == "handled"
    vid = f"{event.output_name}:v1"
    with session_scope(live.service.engine) as session:
        ids = session.scalars(
            sa.select(ModelVersionRow.id).where(ModelVersionRow.name == event.output_name)
        ).all()
    assert ids == [vid]

    live.wait_for("the outbox relayed", lambda: relayed(live))
    announced = [
        r for r in read_topic(live.kafka, topics.MODEL_REGISTERED) if r.key == vid.encode()
    ]
    assert len(announced) == 1
    envelope = decode(announced[0].value)
    payload = unpack(envelope)
    assert (payload.model_version_id, payload.base_model, payload.tenant) == (vid, BASE, "acme")
    assert payload.lineage.training_job_id == event.job_id
    assert envelope.causation_id == first.event_id  # follows the event that caused it
    assert envelope.correlation_id == first.correlation_id
    version = live.service.stub("viewer").GetModelVersion(
        registry_pb2.GetModelVersionRequest(id=vid)
    )
    assert version.produced_by == f"trainer (job {event.job_id})"


def test_a_version_on_an_unknown_base_goes_to_the_dlq_with_the_reason(live):
    event = completed(base=f"never-registered-{uid()}")
    env = publish(live, topics.TRAINING_COMPLETED, event, producer="trainer", key=event.job_id)
    live.wait_for("the refusal", lambda: processed(live, env.event_id) == "dead_lettered")

    def dead_letter():
        for record in read_topic(live.kafka, topics.dlq_topic(topics.TRAINING_COMPLETED)):
            letter = events_pb2.DeadLetter.FromString(record.value)
            if decode(letter.original_value).event_id == env.event_id:
                return letter
        return None

    letter = live.wait_for("the dead letter", dead_letter)
    assert letter.consumer_group == live.runtime.group_id
    assert f"names base model '{event.base_model}', which is not registered" in letter.error
    assert "UnknownBaseModel" in letter.error
    audit = (
        live.service.stub("viewer")
        .ListAudit(registry_pb2.ListAuditRequest(subject=f"training_job:{event.job_id}"))
        .entries
    )
    assert [(e.action, e.actor) for e in audit] == [("training.completed.refused", "registry")]
    assert "not registered" in audit[0].reason
    with session_scope(live.service.engine) as session:
        assert session.get(ModelVersionRow, f"{event.output_name}:v1") is None


def test_from_training_to_a_live_deployment_through_the_broker(live):
    ensure_base(live)
    event = completed(name=f"bot-{uid()}", kind=common_pb2.MODEL_KIND_MERGED)
    publish(live, topics.TRAINING_COMPLETED, event, producer="trainer", key=event.job_id)
    vid = f"{event.output_name}:v1"
    viewer, operator = live.service.stub("viewer"), live.service.stub("operator", name="olga")

    def gate_verdict():
        with session_scope(live.service.engine) as session:
            if session.get(ModelVersionRow, vid) is None:
                return None
        version = viewer.GetModelVersion(registry_pb2.GetModelVersionRequest(id=vid))
        return version.gate_verdict

    live.wait_for("the version", lambda: gate_verdict() is not None)
    report = verdict(vid, True)
    publish(live, topics.EVALUATION_COMPLETED, report, producer="evaluator", key=vid)
    live.wait_for("the verdict", lambda: gate_verdict() == common_pb2.GATE_VERDICT_PASS)

    use_case = f"uc-{uid()}"
    operator.Promote(
        registry_pb2.PromoteRequest(
            model_version_id=vid, use_case=use_case, stage=registry_pb2.STAGE_PRODUCTION
        )
    )
    live.wait_for("the outbox relayed", lambda: relayed(live))
    key = f"acme/{use_case}/production".encode()
    [record] = [r for r in read_topic(live.kafka, topics.DEPLOYMENT_REQUESTED) if r.key == key]
    request = unpack(decode(record.value))
    assert (request.model_version_id, request.kind, request.requested_by) == (
        vid,
        common_pb2.MODEL_KIND_MERGED,
        "olga",
    )

    publish(
        live,
        topics.DEPLOYMENT_COMPLETED,
        events_pb2.DeploymentCompleted(
            deployment_id=request.deployment_id, model_version_id=vid, ok=True, triton_model="llm"
        ),
        producer="gateway",
        key=request.deployment_id,
    )

    def deployment_status():
        graph = viewer.GetLineage(
            registry_pb2.GetLineageRequest(
                node_id=f"alias:acme/{use_case}/production",
                direction=registry_pb2.GetLineageRequest.UPSTREAM,
            )
        )
        down = viewer.GetLineage(
            registry_pb2.GetLineageRequest(
                node_id=f"model_version:{vid}",
                direction=registry_pb2.GetLineageRequest.DOWNSTREAM,
            )
        )
        assert f"dataset_version:{event.lineage.dataset_version}" in {n.id for n in graph.nodes}
        [dep] = [n for n in down.nodes if n.kind == "deployment"]
        assert {n.id for n in down.nodes if n.kind == "evaluation"} == {
            f"evaluation:{report.report_id}"
        }
        return dep.attributes["status"] == "live"

    live.wait_for("the deployment to be live", deployment_status)
