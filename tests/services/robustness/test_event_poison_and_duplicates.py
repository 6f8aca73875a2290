"""Poison and duplicate events on every topic every service consumes, through the real
broker, with each service's real handlers on its own database.

The subscriptions are not listed by hand: each service's `workers(settings, engine)` (what
service_main runs) is built and the event runtimes it returns say which topics it
consumes. Every (service, topic) pair must have a case in CASES, so a new consumer fails
`test_every_declared_subscription_has_a_case` until it gets one. For each pair:

- poison: bytes that are not an envelope, a well-formed envelope of the wrong event
  type and broken JSON labelled as JSON each go to <topic>.dlq once with the reason, and
  the consumer goes on (the valid event sent after them is handled);
- duplicate: a valid event with a visible effect (rows, outbox events, a worker's
  doorbell) delivered twice with the same event id changes nothing the second time.

The consumers here run without the outbox relay, so what a handler stages stays in its
database, countable, instead of waking the other services' consumers. Each group starts
at the topics' current end: records of earlier tests in the session are not theirs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from robustness_helpers import Fleet
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from posttrain.db import session_scope
from posttrain.events import (
    EventConsumer,
    EventProducer,
    EventRuntime,
    RetryPolicy,
    encode,
    ensure_topics,
    make_envelope,
    topics,
)
from posttrain.events.tables import ProcessedEvent
from posttrain.registry.tables import BaseModelRow, DeploymentRow
from posttrain.storage import MANIFEST_MEDIA_TYPE
from posttrain.trainer.tables import TrainingJobRow
from posttrain.v1 import common_pb2, events_pb2
from services.evaluator import servicer as evaluator_service
from services.gateway import handlers as gateway_handlers
from services.intake import servicer as intake_service
from services.registry import handlers as registry_handlers
from services.trainer import comparisons
from services.trainer import runner as trainer_runner

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "libs" / "registry"))

from registry_factories import (  # noqa: E402
    BASE,
    Recorder,
    add_base,
    completed,
    promote,
    seed_version,
    verdict,
)

# What each service's process runs beside its gRPC server (as its __main__ passes it to
# service_main); the trainer's is run_all's.
SERVICE_WORKERS: dict[str, Callable[[Any, Engine], list]] = {
    "intake": intake_service.workers,
    "registry": registry_handlers.event_workers,
    "evaluator": evaluator_service.workers,
    "gateway": gateway_handlers.workers,
    "trainer": lambda s, e: [*trainer_runner._worker(s, e), comparisons.collector(s, e)],
}


# Services whose process runs no event consumer, and why.
NO_CONSUMER = {"console": "a web UI over the other services' gRPC APIs"}


def event_runtimes(workers: list) -> list[EventRuntime]:
    """The event runtimes among a service's workers (some hold theirs as `.events`)."""
    found = []
    for worker in workers:
        if isinstance(worker, EventRuntime):
            found.append(worker)
        elif isinstance(getattr(worker, "events", None), EventRuntime):
            found.append(worker.events)
    return found


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def uid() -> str:
    return uuid.uuid4().hex[:10]


def fake_artifact(bucket: str, name: str) -> common_pb2.ArtifactRef:
    """A reference to a manifest that is not in the store."""
    return common_pb2.ArtifactRef(
        uri=f"s3://{bucket}/missing/{name}/manifest.json",
        sha256=sha(name),
        size_bytes=512,
        media_type=MANIFEST_MEDIA_TYPE,
    )


# ------------------------------------------------------------------ the running consumers


@dataclass
class Subscriber:
    """One service's consumer group, running its real handlers on its own database."""

    service: str
    runtime: EventRuntime  # as the service declared it (handlers, engine)
    consumer: EventConsumer
    thread: threading.Thread
    extra: Any = None  # what a case needs besides the database (the trainer's worker)

    @property
    def engine(self) -> Engine:
        return self.runtime.engine

    @property
    def group_id(self) -> str:
        return self.consumer.group_id


@dataclass
class Bus:
    fleet: Fleet
    kafka: Any
    subscribers: dict[str, Subscriber]
    declared: set[tuple[str, str]]
    producer: EventProducer
    settings: dict[str, Any] = field(default_factory=dict)

    def send(self, topic: str, key: str, value: bytes, headers=()) -> None:
        self.producer.send_raw(topic, key.encode(), value, list(headers))


def commit_at_end(kafka, group_id: str, subscribed: list[str]) -> None:
    """Start `group_id` at the current end of its topics."""
    consumer = KafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers, group_id=group_id, enable_auto_commit=False
    )
    try:
        tps = [
            TopicPartition(t, p) for t in subscribed for p in consumer.partitions_for_topic(t) or ()
        ]
        ends = consumer.end_offsets(tps)
        consumer.commit({tp: OffsetAndMetadata(end, "", -1) for tp, end in ends.items()})
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def bus(fleet: Fleet) -> Iterator[Bus]:
    kafka = fleet.settings["registry"].kafka.model_copy(
        update={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
    )
    ensure_topics(kafka, topics.all_topics(), partitions=2)
    settings = {name: s.model_copy(update={"kafka": kafka}) for name, s in fleet.settings.items()}
    # The evaluator asks the registry (this fleet) for aliases with a key of its own.
    settings["evaluator"] = settings["evaluator"].model_copy(
        update={"registry_api_key": fleet.keys["admin"]}
    )
    producer = EventProducer(kafka, producer_name="robustness")
    subscribers: dict[str, Subscriber] = {}
    declared: set[tuple[str, str]] = set()
    try:
        for service, workers_fn in SERVICE_WORKERS.items():
            workers = list(workers_fn(settings[service], fleet.engines[service]))
            runtimes = event_runtimes(workers)
            for runtime in runtimes:
                declared |= {(service, topic) for topic in runtime.handlers}
            if not runtimes or not [r for r in runtimes if r.handlers]:
                continue
            (runtime,) = [r for r in runtimes if r.handlers]
            group = f"{runtime.group_id}-{uid()}"
            commit_at_end(kafka, group, list(runtime.handlers))
            consumer = EventConsumer(
                kafka,
                group_id=group,
                handlers=runtime.handlers,
                engine=runtime.engine,
                producer=producer,
                retry=RetryPolicy(max_attempts=2, base_delay_s=0.05),
                lag_interval_s=3600,
            )
            extra = next((w.worker for w in workers if hasattr(w, "worker")), None)
            subscribers[service] = Subscriber(
                service, runtime, consumer, consumer.start(), extra=extra
            )
        yield Bus(fleet, kafka, subscribers, declared, producer, settings)
    finally:
        for sub in subscribers.values():
            sub.consumer.stop()
        for sub in subscribers.values():
            sub.thread.join(30)
        producer.close()


# ------------------------------------------------------------------ what a case observes


def db_state(engine: Engine) -> dict[str, list]:
    """Every row of every table, except the dedupe markers (a duplicate adds none, a new
    sentinel adds its own) and the outbox's publication time (no relay runs here)."""
    state = {}
    for table in sa.inspect(engine).get_table_names():
        if table in ("processed_events", "alembic_version") or table.startswith("_"):
            continue
        meta = sa.Table(table, sa.MetaData(), autoload_with=engine)
        columns = [c for c in meta.columns if c.name not in ("published_at", "attempts")]
        with engine.connect() as conn:
            rows = conn.execute(sa.select(*columns)).all()
        state[table] = sorted(repr(tuple(r)) for r in rows)
    return state


def processed(sub: Subscriber, event_id: str) -> str | None:
    with Session(sub.engine) as session:
        row = session.get(ProcessedEvent, {"consumer_group": sub.group_id, "event_id": event_id})
        return row.outcome if row else None


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def dead_letters(bus: Bus, topic: str, key: str) -> list[events_pb2.DeadLetter]:
    """The letters on <topic>.dlq for records of `key`, from the beginning to the end."""
    consumer = KafkaConsumer(bootstrap_servers=bus.kafka.bootstrap_servers)
    dlq = topics.dlq_topic(topic)
    try:
        tps = [TopicPartition(dlq, p) for p in consumer.partitions_for_topic(dlq) or ()]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        found = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, f"could not read {dlq} to its end"
            for batch in consumer.poll(timeout_ms=300).values():
                found += [r for r in batch if r.key == key.encode()]
        return [events_pb2.DeadLetter.FromString(r.value) for r in found]
    finally:
        consumer.close()


# ------------------------------------------------------------------ the cases


@dataclass
class Valid:
    """A valid record of the topic whose handling has an effect."""

    key: str
    value: bytes
    headers: list
    event_id: str


def envelope_record(topic: str, payload, key: str) -> Valid:
    env = make_envelope(topic, payload, producer="robustness", aggregate_id=key)
    _, value, headers = encode(env)
    return Valid(key, value, headers, env.event_id)


def valid_data_approved(bus: Bus, sub: Subscriber, key: str) -> Valid:
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(3)
    ]
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    store = bus.fleet.store
    obj = f"incoming/{key}.jsonl"
    store.client.put_object(store.bucket, obj, io.BytesIO(data), len(data))
    event_id = uid()
    doc = {
        "event_id": event_id,
        "dataset": f"ds-{key[-6:]}",
        "uri": f"s3://{store.bucket}/{obj}",
        "format": "jsonl",
        "schema": "chat",
        "sha256": hashlib.sha256(data).hexdigest(),
        "approved_by": "dana@upstream",
        "approved_at": "2026-11-29T10:00:00Z",
        "source": "crm-export",
        "tenant": "acme",
    }
    return Valid(key, json.dumps(doc).encode(), [("content-type", b"application/json")], event_id)


def valid_training_requested(bus: Bus, sub: Subscriber, key: str) -> Valid:
    now = dt.datetime.now(dt.UTC)
    job_id = uuid.uuid4().hex
    with session_scope(sub.engine) as session:
        session.add(
            TrainingJobRow(
                job_id=job_id,
                tenant="acme",
                state="QUEUED",
                base_model="tiny",
                base_weights_uri="s3://nowhere/base/manifest.json",
                base_weights_sha256=sha("base"),
                base_weights_size=1,
                dataset="ds",
                dataset_version=sha("ds"),
                dataset_manifest_uri="s3://nowhere/ds/manifest.json",
                dataset_manifest_sha256=sha("ds-manifest"),
                dataset_manifest_size=1,
                method="lora",
                config_yaml="method: lora\n",
                output_name=f"bot-{key[-6:]}",
                submitted_by="robustness",
                created_at=now,
                updated_at=now,
            )
        )
    return envelope_record(
        topics.TRAINING_REQUESTED, events_pb2.TrainingRequested(job_id=job_id, tenant="acme"), key
    )


def valid_training_completed(bus: Bus, sub: Subscriber, key: str) -> Valid:
    with session_scope(sub.engine) as session:
        if session.get(BaseModelRow, BASE) is None:
            add_base(session)
    return envelope_record(topics.TRAINING_COMPLETED, completed(name=f"bot-{uid()}"), key)


def valid_evaluation_completed(bus: Bus, sub: Subscriber, key: str) -> Valid:
    vid = seed_version(sub.engine, name=f"bot-{uid()}")
    return envelope_record(topics.EVALUATION_COMPLETED, verdict(vid, True), key)


def valid_deployment_completed(bus: Bus, sub: Subscriber, key: str) -> Valid:
    vid = seed_version(sub.engine, passed=True, name=f"bot-{uid()}")
    # Its deployment.requested is only recorded: no relay runs, and the gateway's
    # consumer here must only see what its own cases send.
    promote(sub.engine, vid, use_case=f"uc-{uid()}", emit=Recorder())
    with Session(sub.engine) as session:
        deployment_id = session.scalars(
            sa.select(DeploymentRow.id).where(DeploymentRow.model_version_id == vid)
        ).one()
    event = events_pb2.DeploymentCompleted(
        deployment_id=deployment_id, model_version_id=vid, ok=True, triton_model="tiny"
    )
    return envelope_record(topics.DEPLOYMENT_COMPLETED, event, key)


def valid_model_registered(bus: Bus, sub: Subscriber, key: str) -> Valid:
    # Artifacts that are not in the store: the evaluator answers with a FAIL report
    # ("model could not be loaded") and its evaluation.completed.
    vid = f"bot-{key[-8:]}:v1"
    event = events_pb2.ModelRegistered(
        model_version_id=vid,
        tenant="acme",
        kind=common_pb2.MODEL_KIND_ADAPTER,
        base_model="tiny",
        artifacts=[fake_artifact(bus.fleet.s3.bucket, vid)],
        chat_template_revision="chatml-v1",
    )
    return envelope_record(topics.MODEL_REGISTERED, event, key)


def valid_deployment_requested(bus: Bus, sub: Subscriber, key: str) -> Valid:
    # No kind: the gateway answers it (a FAILED deployment and its deployment.completed)
    # without waiting for Triton.
    event = events_pb2.DeploymentRequested(
        deployment_id=f"dep-{uid()}",
        tenant="acme",
        use_case="support",
        stage="production",
        model_version_id=f"bot-{key[-8:]}:v1",
        artifacts=[fake_artifact(bus.fleet.s3.bucket, key)],
    )
    return envelope_record(topics.DEPLOYMENT_REQUESTED, event, key)


@dataclass(frozen=True)
class Case:
    valid: Callable[[Bus, Subscriber, str], Valid]
    wrong_type_reason: str  # in the dead letter of an envelope of another event type
    outcome: str = "handled"  # the valid event's marker


CASES: dict[tuple[str, str], Case] = {
    ("intake", topics.DATA_APPROVED): Case(valid_data_approved, "DataApproved"),
    ("trainer", topics.TRAINING_REQUESTED): Case(valid_training_requested, "TrainingRequested"),
    ("registry", topics.TRAINING_COMPLETED): Case(valid_training_completed, "TrainingCompleted"),
    ("registry", topics.EVALUATION_COMPLETED): Case(
        valid_evaluation_completed, "EvaluationCompleted"
    ),
    ("registry", topics.DEPLOYMENT_COMPLETED): Case(
        valid_deployment_completed, "DeploymentCompleted"
    ),
    ("evaluator", topics.MODEL_REGISTERED): Case(valid_model_registered, "ModelRegistered"),
    ("gateway", topics.DEPLOYMENT_REQUESTED): Case(
        valid_deployment_requested, "DeploymentRequested"
    ),
}
PAIRS = sorted(CASES)


def pair_id(pair: tuple[str, str]) -> str:
    return f"{pair[0]}<-{pair[1]}"


def observe(sub: Subscriber) -> tuple[dict, bool]:
    """(database state, whether the trainer's worker was woken since the last look)."""
    rang = False
    if sub.extra is not None and hasattr(sub.extra, "_doorbell"):
        rang = sub.extra._doorbell.is_set()
        sub.extra._doorbell.clear()
    return db_state(sub.engine), rang


# ------------------------------------------------------------------ the tests


def test_every_service_is_enumerated() -> None:
    """A new service (a folder with a __main__) must say what its process runs."""
    services = {p.parent.name for p in (REPO / "services").glob("*/__main__.py")}
    assert services == set(SERVICE_WORKERS) | set(NO_CONSUMER)


def test_every_declared_subscription_has_a_case(bus: Bus) -> None:
    assert bus.declared, "no service declared a consumer"
    missing = bus.declared - set(CASES)
    stale = set(CASES) - bus.declared
    assert not missing, f"consumers without a poison/duplicate case: {sorted(missing)}"
    assert not stale, f"cases for consumers no service declares: {sorted(stale)}"


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_poison_goes_to_the_dlq_with_its_reason_and_the_consumer_goes_on(
    bus: Bus, pair: tuple[str, str]
) -> None:
    service, topic = pair
    sub = bus.subscribers[service]
    key = f"poison-{uid()}"  # one key: one partition, so the records keep their order
    garbage = b"\x00\xffnot an envelope " + key.encode()
    bad_json = b'{"event_id": "' + key.encode() + b'", unterminated'  # labelled JSON
    wrong = make_envelope(
        topics.DATASET_REJECTED,
        events_pb2.DatasetRejected(dataset="x", reason="wrong topic"),
        producer="robustness",
        aggregate_id=key,
    )
    _, wrong_value, wrong_headers = encode(wrong)
    valid = CASES[pair].valid(bus, sub, key)

    bus.send(topic, key, garbage)
    bus.send(topic, key, wrong_value, wrong_headers)
    bus.send(topic, key, bad_json, [("content-type", b"application/json")])
    bus.send(topic, valid.key, valid.value, valid.headers)

    wait_for(
        f"{service} to handle the valid event after the poison",
        lambda: processed(sub, valid.event_id),
        timeout_s=90,
    )
    assert processed(sub, valid.event_id) == CASES[pair].outcome
    assert processed(sub, wrong.event_id) == "dead_lettered"

    letters = wait_for(
        "three dead letters", lambda: (ls := dead_letters(bus, topic, key)) and len(ls) >= 3 and ls
    )
    by_value = {letter.original_value: letter for letter in letters}
    assert len(letters) == 3 and set(by_value) == {garbage, wrong_value, bad_json}
    for letter in letters:
        assert (letter.source_topic, letter.consumer_group) == (topic, sub.group_id)
        assert letter.error and letter.attempts == 1  # no retries for a poison event
    assert "not a posttrain envelope" in by_value[garbage].error
    assert CASES[pair].wrong_type_reason in by_value[wrong_value].error
    # intake reads JSON (the public data.approved); the others only envelopes.
    assert re.search("not valid JSON|not a posttrain envelope", by_value[bad_json].error)
    assert valid.value not in by_value


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_an_event_delivered_twice_has_one_effect(bus: Bus, pair: tuple[str, str]) -> None:
    service, topic = pair
    sub = bus.subscribers[service]
    key = f"dup-{uid()}"
    valid = CASES[pair].valid(bus, sub, key)
    before = observe(sub)

    bus.send(topic, valid.key, valid.value, valid.headers)
    wait_for(f"{service} to handle it", lambda: processed(sub, valid.event_id), timeout_s=90)
    assert processed(sub, valid.event_id) == CASES[pair].outcome
    first = observe(sub)
    assert first[0] != before[0] or first[1], f"{pair} had no visible effect: a vacuous case"

    # The very same record again, then a sentinel behind it on the same partition: once
    # the sentinel is taken care of, the duplicate was too.
    bus.send(topic, valid.key, valid.value, valid.headers)
    sentinel = make_envelope(
        topics.DATASET_REJECTED,
        events_pb2.DatasetRejected(dataset="sentinel"),
        producer="robustness",
        aggregate_id=key,
    )
    _, value, headers = encode(sentinel)
    bus.send(topic, key, value, headers)
    wait_for("the sentinel behind the duplicate", lambda: processed(sub, sentinel.event_id))

    second = observe(sub)
    assert not second[1], "the duplicate woke the worker again"
    changed = {t for t in second[0] if second[0][t] != first[0].get(t)}
    if service == "intake":
        # intake answers a refused upstream record (the sentinel) with a dataset.rejected.
        added = set(second[0]["outbox_events"]) - set(first[0]["outbox_events"])
        assert len(added) == 1 and topics.DATASET_REJECTED in added.pop()
        changed.discard("outbox_events")
    assert not changed, f"the duplicate changed {sorted(changed)}"
    with Session(sub.engine) as session:
        markers = session.scalars(
            sa.select(ProcessedEvent.event_id).where(
                ProcessedEvent.consumer_group == sub.group_id,
                ProcessedEvent.event_id == valid.event_id,
            )
        ).all()
    assert markers == [valid.event_id]
