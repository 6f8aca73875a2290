"""Client requests through the gateway's gRPC API to the real tritonserver: routing by the
key's tenant, the same text as Triton itself, tenant isolation, limits, status codes,
feedback, deployment listing, roles and streaming."""

from __future__ import annotations

import math
import socket
import time
import urllib.request

import grpc
import pytest
from conftest import (
    PROMPT,
    TUNED_V1,
    deployment_request,
    direct_text,
    gateway_settings,
    generate_request,
    rpc_error,
    start_gateway,
)

from posttrain.db import create_db_engine
from posttrain.events import topics
from posttrain.gateway import InferenceGateway, TritonLLM
from posttrain.gateway.routes import find_route
from posttrain.gateway.tables import InferenceRow
from posttrain.gateway.triton import DeadlineExceeded
from posttrain.rpc.errors import Unavailable, field_violations
from posttrain.rpc.metrics import MetricsEndpoint
from posttrain.serving.repository import unload_model
from posttrain.v1 import gateway_pb2
from services.gateway.handlers import Reconciler


def test_generate_answers_with_the_adapter_exactly_as_triton_does(gateway):
    client = gateway.stub("client@acme")
    response = client.Generate(generate_request(max_tokens=8), timeout=60)
    with gateway.session() as session:
        route = find_route(session, "acme", "support", "production")
    assert route.lora_name == "support-bot@v1" and route.deployment_id == "dep-acme-a1"
    expected = direct_text(gateway.triton_url, route.triton_model, PROMPT, route.lora_name, 8)
    base = direct_text(gateway.triton_url, route.triton_model, PROMPT, "", 8)
    assert response.text == expected != base
    assert response.deployment_id == "dep-acme-a1"
    assert response.usage.prompt_tokens > 0 and 0 < response.usage.completion_tokens <= 8
    assert response.latency_ms > 0 and len(response.request_id) == 32
    assert response.variant == "" and response.experiment_id == ""
    # A chat conversation goes in as the chat JSON the model renders with its template.
    chat = gateway_pb2.GenerateRequest(
        use_case="support",
        conversation=gateway_pb2.Conversation(
            messages=[gateway_pb2.ChatMessage(role="user", content="Reverse: red green blue")]
        ),
        sampling=gateway_pb2.SamplingParams(max_tokens=6),
    )
    chat_text = '{"messages": [{"role": "user", "content": "Reverse: red green blue"}]}'
    assert client.Generate(chat, timeout=60).text == direct_text(
        gateway.triton_url, route.triton_model, chat_text, route.lora_name, 6
    )
    assert (
        gateway.app.controller.layout.adapter_dir(route.triton_model)
        .joinpath("support-bot@v1")
        .is_dir()
    )
    # Stored and handed to the event sink (the Kafka side: test_gateway_events.py).
    assert gateway.app.gateway.records.flush()
    with gateway.session() as session:
        row = session.get(InferenceRow, response.request_id)
        assert (row.tenant, row.use_case, row.model_version_id) == ("acme", "support", TUNED_V1)
        assert row.cost > 0 and row.success is None
    logged = [p for t, p, _ in gateway.events if t == topics.INFERENCE_LOGGED]
    assert response.request_id in {p.request_id for p in logged}


def test_a_tenant_reaches_only_its_own_routes(gateway):
    acme, globex = gateway.stub("client@acme"), gateway.stub("client@globex")
    assert acme.Generate(generate_request("support"), timeout=60).deployment_id == "dep-acme-a1"
    assert globex.Generate(generate_request("billing"), timeout=60).deployment_id == (
        "dep-globex-a2"
    )
    for use_case in ("support", "support/production", "support-bot", "dep-acme-a1"):
        error = rpc_error(lambda u=use_case: globex.Generate(generate_request(u), timeout=60))
        assert error.code() == grpc.StatusCode.NOT_FOUND, use_case
    error = rpc_error(lambda: acme.Generate(generate_request("billing"), timeout=60))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    # Adapters cannot be named at all: a lora name is no use case.
    error = rpc_error(lambda: globex.Generate(generate_request("support-bot@v1"), timeout=60))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The same use case name in two tenants: two routes, two adapters.
    row = gateway.deploy(
        deployment_request(
            "dep-globex-support",
            gateway.artifacts,
            version="billing-bot:v2",
            artifact="a2",
            tenant="globex",
            use_case="support",
        )
    )
    assert row.status == "live", row.error
    theirs = globex.Generate(generate_request("support"), timeout=60)
    ours = acme.Generate(generate_request("support"), timeout=60)
    assert (theirs.deployment_id, ours.deployment_id) == ("dep-globex-support", "dep-acme-a1")
    model = row.triton_model
    assert theirs.text == direct_text(gateway.triton_url, model, PROMPT, "billing-bot@v2", 8)
    assert ours.text == direct_text(gateway.triton_url, model, PROMPT, "support-bot@v1", 8)
    # Deployments and requests of one tenant are invisible to the other.
    listed = globex.ListDeployments(gateway_pb2.ListDeploymentsRequest(), timeout=10)
    assert {d.tenant for d in listed.deployments} == {"globex"}
    error = rpc_error(
        lambda: globex.ListDeployments(gateway_pb2.ListDeploymentsRequest(tenant="acme"))
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    mine = acme.Generate(generate_request("support", max_tokens=2), timeout=60)
    error = rpc_error(
        lambda: globex.RecordFeedback(
            gateway_pb2.RecordFeedbackRequest(request_id=mine.request_id, success=True)
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    admin = gateway.stub("admin@ops")
    everything = admin.ListDeployments(gateway_pb2.ListDeploymentsRequest(tenant="*"))
    assert {d.tenant for d in everything.deployments} >= {"acme", "globex"}


def test_no_deployment_on_a_use_case_is_not_found_and_bad_requests_name_the_field(gateway):
    client = gateway.stub("client@acme")
    error = rpc_error(lambda: client.Generate(generate_request("unknown-use"), timeout=10))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "unknown-use" in error.details()
    error = rpc_error(lambda: client.Generate(generate_request("support/staging"), timeout=10))
    assert error.code() == grpc.StatusCode.NOT_FOUND  # nothing promoted to staging
    bad = gateway_pb2.GenerateRequest(
        use_case="support",
        sampling=gateway_pb2.SamplingParams(
            max_tokens=100_000, temperature=-1, top_p=3, stop=[""] * 9
        ),
    )
    error = rpc_error(lambda: client.Generate(bad, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in field_violations(error)}
    assert {
        "input",
        "sampling.max_tokens",
        "sampling.temperature",
        "sampling.top_p",
        "sampling.stop",
    } <= fields
    huge = generate_request(prompt="x" * 70_000)
    error = rpc_error(lambda: client.Generate(huge, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit is 65536" in error.details()
    viewer = gateway.stub("viewer@acme")
    error = rpc_error(lambda: viewer.Generate(generate_request(), timeout=10))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_callers_deadline_reaches_triton(gateway):
    long = generate_request(max_tokens=1000, prompt=PROMPT * 20)
    error = rpc_error(lambda: gateway.stub("client@acme").Generate(long, timeout=0.3))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # What is left of the deadline goes to Triton as client_timeout: the gateway's own call
    # gives up then too, instead of holding a thread until the whole answer is there.
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        gateway.app.gateway.generate("acme", long, timeout_s=0.2)
    assert time.monotonic() - started < 1.5


def test_feedback_is_stored_for_the_tenants_own_request(gateway):
    client = gateway.stub("client@acme")
    response = client.Generate(generate_request(max_tokens=2, user_key="user-7"), timeout=60)
    client.RecordFeedback(
        gateway_pb2.RecordFeedbackRequest(
            request_id=response.request_id, success=True, human_intervention=True, rating=4.5
        )
    )
    with gateway.session() as session:
        row = session.get(InferenceRow, response.request_id)
        assert (row.success, row.policy_incident, row.human_intervention, row.rating) == (
            True,
            False,
            True,
            4.5,
        )
        assert row.feedback_by == "client@acme" and len(row.user_key_hash) == 64
    assert "user-7" not in row.user_key_hash
    recorded = [p for t, p, _ in gateway.events if t == topics.FEEDBACK_RECORDED]
    assert recorded[-1].request_id == response.request_id and recorded[-1].tenant == "acme"
    rater = gateway.stub("rater@acme")
    rater.RecordFeedback(
        gateway_pb2.RecordFeedbackRequest(request_id=response.request_id, policy_incident=True)
    )
    with gateway.session() as session:
        assert session.get(InferenceRow, response.request_id).policy_incident is True
    for bad in (
        gateway_pb2.RecordFeedbackRequest(request_id="no-such-request"),
        gateway_pb2.RecordFeedbackRequest(request_id=response.request_id, rating=math.nan),
    ):
        error = rpc_error(lambda b=bad: client.RecordFeedback(b))
        assert error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


def test_streaming_gives_the_same_text_in_pieces_from_the_decoupled_twin(
    gateway, stack, triton, model_cache, artifacts
):
    client = gateway.stub("client@acme")
    whole = client.Generate(generate_request(max_tokens=12), timeout=60).text
    # Without a decoupled twin, a stream is one final chunk.
    [only] = list(client.GenerateStream(generate_request(max_tokens=12), timeout=60))
    assert only.final and only.text_delta == whole and only.summary.text == whole
    # A controller with streaming models loads the twin (once) and routes streams to it.
    streaming = gateway_settings(stack, triton, model_cache, artifacts, streaming_models=True)
    engine = create_db_engine(str(gateway.engine.url.render_as_string(hide_password=False)))
    env = start_gateway(engine, streaming, triton.triton_grpc_url, artifacts)
    try:
        row = env.deploy(
            deployment_request("dep-acme-a1-stream", artifacts, use_case="support-stream")
        )
        assert row.status == "live" and row.stream_model.endswith("_stream"), row.error
        chunks = list(
            env.stub("client@acme").GenerateStream(
                generate_request("support-stream", max_tokens=12), timeout=60
            )
        )
    finally:
        env.close()
        engine.dispose()
    assert len(chunks) > 2 and chunks[-1].final and not any(c.final for c in chunks[:-1])
    assert "".join(c.text_delta for c in chunks) == whole
    assert chunks[-1].summary.text == whole
    assert chunks[-1].summary.deployment_id == "dep-acme-a1-stream"
    assert len({c.request_id for c in chunks}) == 1


def test_rate_limit_per_tenant_is_resource_exhausted(
    gateway, stack, triton, model_cache, artifacts
):
    limited = gateway_settings(
        stack, triton, model_cache, artifacts, rate_limit_rps=0.5, rate_limit_burst=2
    )
    engine = create_db_engine(str(gateway.engine.url.render_as_string(hide_password=False)))
    env = start_gateway(engine, limited, triton.triton_grpc_url, artifacts)
    try:
        acme, globex = env.stub("client@acme"), env.stub("client@globex")
        codes = []
        for _ in range(4):
            try:
                acme.Generate(generate_request(max_tokens=1), timeout=60)
                codes.append("OK")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)
                assert "rate limit" in exc.details()
        assert codes[:2] == ["OK", "OK"] and "RESOURCE_EXHAUSTED" in codes[2:]
        # Another tenant has its own bucket.
        globex.Generate(generate_request("billing", max_tokens=1), timeout=60)
    finally:
        env.close()
        engine.dispose()


def test_triton_down_is_unavailable(gateway):
    dead = InferenceGateway(
        gateway.engine,
        TritonLLM("127.0.0.1:1"),
        gateway.app.experiments,
        gateway.app.gateway.limits,
    )
    with pytest.raises(Unavailable, match="unreachable"):
        dead.generate("acme", generate_request(max_tokens=1), timeout_s=5)


def test_a_model_triton_lost_is_unavailable_until_the_reconciler_loads_it_again(gateway):
    """What a tritonserver restart does under explicit model control, for one model."""
    if gateway.engine.dialect.name != "sqlite":
        pytest.skip("one backend is enough: the database part is one SELECT")
    with gateway.session() as session:
        model = find_route(session, "acme", "support", "production").triton_model
    client = gateway.stub("client@acme")
    unload_model(gateway.app.triton.client, model)
    error = rpc_error(lambda: client.Generate(generate_request(max_tokens=2), timeout=30))
    assert error.code() == grpc.StatusCode.UNAVAILABLE and model in error.details()
    assert Reconciler(gateway.app.controller, gateway.engine, 0).run_once() == [model]
    assert client.Generate(generate_request(max_tokens=2), timeout=60).text


def test_metrics_per_route_on_the_metrics_port(gateway):
    client = gateway.stub("client@acme")
    client.Generate(generate_request(max_tokens=2), timeout=60)
    rpc_error(lambda: client.Generate(generate_request("nothing-here"), timeout=10))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = MetricsEndpoint("127.0.0.1", port).start()
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            text = response.read().decode()
    finally:
        endpoint.stop()
    with gateway.session() as session:
        route = find_route(session, "acme", "support", "production")
    label = f'route="{route.triton_model}/{route.lora_name}"'
    served = [
        line
        for line in text.splitlines()
        if line.startswith("posttrain_gateway_requests_total{")
        and label in line
        and 'code="OK"' in line
    ]
    assert served and float(served[0].rsplit(" ", 1)[1]) >= 1
    assert f'posttrain_gateway_request_seconds_count{{{label},use_case="support"}}' in text
    assert 'posttrain_gateway_rejected_total{reason="no_route",tenant="acme"}' in text
