"""The gateway's event side on the real broker: deployment.requested consumed by the
controller (adapter, merged, rollback, a redelivery, a failure), deployment.completed
published through the outbox, and inference.logged / feedback.recorded published
directly, surviving a broker that is away for a while."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa
from conftest import (
    MERGED_V1,
    PROMPT,
    TUNED_V1,
    TUNED_V2,
    GatewayEnv,
    deployment_request,
    direct_text,
    gateway_settings,
    generate_request,
    start_gateway,
    wait_for,
)
from kafka import KafkaConsumer

from posttrain.db import create_db_engine
from posttrain.events import (
    EventProducer,
    EventRuntime,
    decode,
    make_envelope,
    topics,
    unpack,
)
from posttrain.events.consumer import processed_count
from posttrain.events.tables import OutboxEvent
from posttrain.gateway.routes import find_route
from posttrain.gateway.tables import DeploymentRow
from posttrain.v1 import common_pb2, events_pb2, gateway_pb2
from services.gateway.handlers import deployment_handler
from services.gateway.publisher import BufferedEventPublisher

ALIAS_KEY = "acme/support/production"  # one Kafka key: the test's events stay in order


class Tail:
    """Every record of a topic from the start, decoded; for looking up what was published."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = KafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
        )
        self.payloads: list = []

    def find(self, predicate, timeout_s: float = 60.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for payload in self.payloads:
                if predicate(payload):
                    return payload
            for records in self.consumer.poll(timeout_ms=300).values():
                self.payloads += [unpack(decode(r.value)) for r in records]
        raise AssertionError(f"no matching event on the topic within {timeout_s}s")

    def close(self) -> None:
        self.consumer.close()


class AwayBroker:
    """Makes the publisher's producers; the broker is 'away' until `back` is set."""

    def __init__(self, kafka) -> None:
        self.kafka, self.attempts, self.back = kafka, 0, threading.Event()

    def __call__(self) -> EventProducer:
        self.attempts += 1
        if not self.back.is_set():
            raise ConnectionError("broker away (test)")
        return EventProducer(self.kafka, producer_name="gateway")


@dataclass
class LiveGateway:
    """The gateway with its consumer, and a 'registry' publishing deployment requests."""

    env: GatewayEnv
    runtime: EventRuntime
    publisher: BufferedEventPublisher
    away: AwayBroker
    completed: Tail
    producer: EventProducer
    topic: str
    prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def id(self, name: str) -> str:
        return f"dep-{self.prefix}-{name}"

    def request(self, payload) -> events_pb2.Envelope:
        """Publish a deployment.requested as the registry would; returns the envelope."""
        envelope = make_envelope(
            topics.DEPLOYMENT_REQUESTED, payload, producer="registry", aggregate_id=ALIAS_KEY
        )
        self.resend(envelope)
        return envelope

    def resend(self, envelope: events_pb2.Envelope) -> None:
        self.producer.send_envelope(self.topic, envelope)

    def deployed(self, deployment_id: str, timeout_s: float = 120.0) -> DeploymentRow:
        def row():
            with self.env.session() as session:
                return session.get(DeploymentRow, deployment_id)

        return wait_for(f"deployment {deployment_id}", row, timeout_s)

    def processed(self) -> int:
        return processed_count(self.env.engine, self.runtime.group_id)


@pytest.fixture(scope="module")
def live(module_db_url, stack, triton, model_cache, artifacts) -> Iterator[LiveGateway]:
    """The gateway with its deployment consumer (on a topic of its own, so other tests'
    deployment.requested never reach it), outbox relay and event publisher running."""
    settings = gateway_settings(stack, triton, model_cache, artifacts)
    engine = create_db_engine(module_db_url)
    env = start_gateway(engine, settings, triton.triton_grpc_url, artifacts)
    topic = f"deployment.requested.{uuid.uuid4().hex[:8]}"
    runtime = EventRuntime(
        settings.kafka,
        engine,
        service_name="gateway",
        handlers={topic: deployment_handler(env.app.controller)},
        group_id=f"gateway-test-{uuid.uuid4().hex[:8]}",
    ).start()
    away = AwayBroker(settings.kafka)
    publisher = BufferedEventPublisher(
        settings.kafka, producer_name="gateway", make_producer=away, max_backoff_s=1.0
    ).start()
    env.app.gateway.events = publisher
    live = LiveGateway(
        env,
        runtime,
        publisher,
        away,
        Tail(stack.kafka_bootstrap, topics.DEPLOYMENT_COMPLETED),
        EventProducer(settings.kafka, producer_name="registry"),
        topic,
    )
    try:
        assert runtime.ready.wait(60), "the gateway's event runtime did not start"
        yield live
    finally:
        live.completed.close()
        live.producer.close()
        publisher.stop()
        runtime.stop()
        env.close()
        engine.dispose()


def generate(env, use_case: str = "support", max_tokens: int = 8):
    return env.stub("client@acme").Generate(
        generate_request(use_case, max_tokens=max_tokens), timeout=60
    )


def test_an_adapter_deployment_goes_live_and_answers_like_triton(live):
    env = live.env
    live.request(deployment_request(live.id("v1"), env.artifacts))
    row = live.deployed(live.id("v1"))
    assert row.status == "live", row.error
    assert (row.triton_model.startswith("llm_tiny-llama_"), row.lora_name) == (
        True,
        "support-bot@v1",
    )
    done = live.completed.find(lambda p: p.deployment_id == live.id("v1"))
    assert done.ok and done.error == "" and done.model_version_id == TUNED_V1
    assert (done.triton_model, done.lora_name) == (row.triton_model, row.lora_name)
    response = generate(env)
    assert response.deployment_id == live.id("v1")
    assert response.text == direct_text(env.triton_url, row.triton_model, PROMPT, row.lora_name, 8)


def test_a_redelivery_and_a_second_event_for_the_same_deployment_change_nothing(live):
    env = live.env
    first = live.request(deployment_request(live.id("twice"), env.artifacts, version=TUNED_V1))
    assert live.deployed(live.id("twice")).status == "live"
    link = env.app.controller.layout.adapter_dir(live.deployed(live.id("twice")).triton_model)
    installed = (link / "support-bot@v1").resolve()
    handled = live.processed()
    live.resend(first)  # the same event id: the consumer skips it
    live.request(deployment_request(live.id("twice"), env.artifacts, version=TUNED_V1))
    # A deployment that fails, after them on the same key: once it is answered, so are they.
    broken = deployment_request(live.id("broken"), env.artifacts, version=TUNED_V2)
    broken.artifacts[0].sha256 = "0" * 64  # not what is stored there
    live.request(broken)
    failed = live.deployed(live.id("broken"))
    assert failed.status == "failed" and "0" * 64 in failed.error, failed.error
    assert live.processed() == handled + 2  # the new event id and the broken one
    report = live.completed.find(lambda p: p.deployment_id == live.id("broken"))
    assert not report.ok and report.error == failed.error
    with env.session() as session:
        rows = session.scalars(
            sa.select(DeploymentRow).where(DeploymentRow.id == live.id("twice"))
        ).all()
        outbox = [
            unpack(decode(v))
            for v in session.scalars(
                sa.select(OutboxEvent.value).where(OutboxEvent.topic == topics.DEPLOYMENT_COMPLETED)
            )
        ]
        route = find_route(session, "acme", "support", "production")
    assert len(rows) == 1
    assert [p.deployment_id for p in outbox].count(live.id("twice")) == 1
    assert (link / "support-bot@v1").resolve() == installed  # not installed again
    assert route.deployment_id == live.id("twice")  # the failure left the route alone


def test_a_merged_model_is_its_own_triton_model_with_the_adapters_output(live):
    env = live.env
    live.request(
        deployment_request(
            live.id("merged"),
            env.artifacts,
            version=MERGED_V1,
            artifact="merged_a1",
            kind=common_pb2.MODEL_KIND_MERGED,
            stage="staging",
        )
    )
    row = live.deployed(live.id("merged"), timeout_s=180)
    assert row.status == "live", row.error
    assert row.triton_model.startswith("merged_support-bot-merged-v1_") and row.lora_name == ""
    assert env.app.triton.is_ready(row.triton_model)
    merged = generate(env, "support/staging", max_tokens=10)
    adapter = generate(env, "support", max_tokens=10)
    assert merged.deployment_id == live.id("merged")
    assert merged.text == adapter.text
    assert live.completed.find(lambda p: p.deployment_id == live.id("merged")).ok


def test_rollback_flips_the_route_back_without_reinstalling(live):
    env = live.env
    before = generate(env).text
    live.request(deployment_request(live.id("v2"), env.artifacts, version=TUNED_V2, artifact="a2"))
    v2 = live.deployed(live.id("v2"))
    assert v2.status == "live", v2.error
    assert generate(env).text == direct_text(
        env.triton_url, v2.triton_model, PROMPT, "support-bot@v2", 8
    )
    assert generate(env).text != before
    live.request(
        deployment_request(live.id("back"), env.artifacts, version=TUNED_V1, rollback=True)
    )
    back = live.deployed(live.id("back"))
    assert back.status == "live" and back.rollback, back.error
    assert back.seconds < 5  # no download, no install, no load: a route flip and a smoke test
    after = generate(env)
    assert after.text == before and after.deployment_id == live.id("back")
    with env.session() as session:
        assert session.get(DeploymentRow, live.id("v2")).status == "superseded"
    listed = env.stub("viewer@acme").ListDeployments(gateway_pb2.ListDeploymentsRequest())
    live_ids = {d.id for d in listed.deployments if d.live}
    assert live.id("back") in live_ids and live.id("v2") not in live_ids


def test_inference_and_feedback_events_reach_kafka_once_the_broker_is_back(live, stack):
    env = live.env
    # The broker has been "away" since the module started: requests were answered anyway.
    responses = [generate(env, max_tokens=2) for _ in range(3)]
    client = env.stub("client@acme")
    client.RecordFeedback(
        gateway_pb2.RecordFeedbackRequest(request_id=responses[0].request_id, success=True)
    )
    assert live.publisher.pending() >= 4 and live.away.attempts >= 1
    live.away.back.set()
    wait_for("the buffer to drain", lambda: live.publisher.pending() == 0, timeout_s=60)
    logged = Tail(stack.kafka_bootstrap, topics.INFERENCE_LOGGED)
    feedback = Tail(stack.kafka_bootstrap, topics.FEEDBACK_RECORDED)
    try:
        for response in responses:
            event = logged.find(lambda p, r=response: p.request_id == r.request_id)
            assert event.tenant == "acme" and event.deployment_id == response.deployment_id
            assert event.completion_tokens == response.usage.completion_tokens
        event = feedback.find(lambda p: p.request_id == responses[0].request_id)
        assert event.success and event.tenant == "acme"
    finally:
        logged.close()
        feedback.close()
    assert live.publisher.dropped == 0
