"""The gateway for real: its parts over the session's tritonserver (explicit model control),
S3 and Kafka, a database per backend, and the servicer in a GrpcServer with API keys.

Models: a tiny random Llama ("tiny-llama": SmolLM2's tokenizer cut to 1024 ids, 2 layers,
weights at std 0.2) and two random LoRA adapters for it, plus a1 merged into the base,
each uploaded once per session as a folder artifact (ArtifactStore.put_folder), as the
trainer publishes them. Triton models are named by content, so they load once per
session: the first module that deploys pays for the loads (~10 s each on 2 cores), later
ones (and the PostgreSQL runs) find them ready.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from posttrain.config import GrpcServerSettings, KafkaSettings, TritonSettings
from posttrain.db import apply_migrations, create_db_engine, session_scope
from posttrain.events import add_to_outbox
from posttrain.rpc import (
    AUTH_MIGRATIONS,
    ApiKeyStore,
    GrpcServer,
    make_channel,
    standard_interceptors,
)
from posttrain.serving.synthetic import make_random_adapter, make_tiny_base, merge_lora_adapter
from posttrain.storage import ArtifactRef, ArtifactStore
from posttrain.v1 import common_pb2, events_pb2, gateway_pb2, gateway_pb2_grpc
from services.gateway.app import GatewayApp, build_app
from services.gateway.servicer import SERVICE_NAME, GatewayServicer
from services.gateway.settings import GatewaySettings

BASE = "tiny-llama"
TUNED_V1 = "support-bot:v1"  # adapter a1
TUNED_V2 = "support-bot:v2"  # adapter a2
MERGED_V1 = "support-bot-merged:v1"  # a1 merged into the base
PROMPT = "Hello there, how are"


@dataclass(frozen=True)
class Artifacts:
    store: ArtifactStore
    base: ArtifactRef
    a1: ArtifactRef
    a2: ArtifactRef
    merged_a1: ArtifactRef
    folders: dict[str, Path]


@pytest.fixture(scope="session")
def gateway_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gateway-models")
    base = make_tiny_base(root / BASE, seed=0)
    a1 = make_random_adapter(base, root / "a1", kind="lora", seed=1)
    a2 = make_random_adapter(
        base, root / "a2", kind="lora", seed=2, r=8, target_modules=["q_proj", "k_proj", "o_proj"]
    )
    merged = merge_lora_adapter(base, a1, root / "merged-a1")
    return {"base": base, "a1": a1, "a2": a2, "merged_a1": merged}


@pytest.fixture(scope="session")
def artifacts(stack, gateway_models) -> Artifacts:
    """The models as folder artifacts in a bucket of the session's S3 server."""
    store = ArtifactStore.from_settings(stack.s3_settings(bucket=f"gw-{uuid.uuid4().hex[:10]}"))
    store.ensure_bucket()
    refs = {
        name: store.put_folder(folder, f"models/test/{name}")
        for name, folder in gateway_models.items()
    }
    return Artifacts(store, refs["base"], refs["a1"], refs["a2"], refs["merged_a1"], gateway_models)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The gateway's model cache, shared by every test (what a shared volume would hold)."""
    return tmp_path_factory.mktemp("gateway-cache")


def deployment_request(
    deployment_id: str,
    artifacts: Artifacts,
    *,
    version: str = TUNED_V1,
    artifact: str = "a1",
    kind: int = common_pb2.MODEL_KIND_ADAPTER,
    tenant: str = "acme",
    use_case: str = "support",
    stage: str = "production",
    rollback: bool = False,
) -> events_pb2.DeploymentRequested:
    """What the registry emits on a promotion (or a rollback)."""
    message = events_pb2.DeploymentRequested(
        deployment_id=deployment_id,
        alias=f"{use_case}/{stage}",
        tenant=tenant,
        model_version_id=version,
        kind=kind,
        base_model=BASE,
        artifacts=[getattr(artifacts, artifact).to_proto()],
        rollback=rollback,
        requested_by="registry-test",
        use_case=use_case,
        stage=stage,
    )
    message.base_model_weights.CopyFrom(artifacts.base.to_proto())
    return message


def direct_text(triton_url: str, model: str, text_input: str, lora: str, max_tokens: int) -> str:
    """The same request straight to Triton with plain tritonclient (greedy)."""
    client = grpcclient.InferenceServerClient(triton_url)
    inputs = []
    for name, array, dtype in (
        ("text_input", np.array([[text_input.encode()]], dtype=object), "BYTES"),
        ("lora_name", np.array([[lora.encode()]], dtype=object), "BYTES"),
        ("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
    ):
        item = grpcclient.InferInput(name, list(array.shape), dtype)
        item.set_data_from_numpy(array)
        inputs.append(item)
    try:
        return client.infer(model, inputs).as_numpy("text_output")[0, 0].decode()
    finally:
        client.close()


# ---------------------------------------------------------------- the gateway under test


@dataclass
class GatewayEnv:
    app: GatewayApp
    engine: Engine
    server: GrpcServer
    keys: ApiKeyStore
    triton_url: str
    artifacts: Artifacts
    events: list = field(default_factory=list)  # (event type, payload, aggregate id)
    _channels: list = field(default_factory=list)
    _keys: dict = field(default_factory=dict)

    def key(self, who: str) -> str:
        """API keys by '<role>@<tenant>' (e.g. 'client@acme'), made on first use."""
        if who not in self._keys:
            role, _, tenant = who.partition("@")
            self._keys[who] = self.keys.create_key(who, role.split("+"), tenant)
        return self._keys[who]

    def stub(self, who: str) -> gateway_pb2_grpc.InferenceGatewayStub:
        channel = make_channel(self.server.address, api_key=self.key(who))
        self._channels.append(channel)
        return gateway_pb2_grpc.InferenceGatewayStub(channel)

    def deploy(self, request: events_pb2.DeploymentRequested):
        """The controller on one deployment.requested, committed with its outbox event."""
        with session_scope(self.engine) as session:

            def emit(event_type, payload, *, aggregate_id):
                return add_to_outbox(
                    session, event_type, payload, producer="gateway", aggregate_id=aggregate_id
                )

            return self.app.controller.handle(session, request, emit)

    def session(self) -> Session:
        return Session(self.engine)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self.server.stop(grace=0)
        self.app.close()


def gateway_settings(stack, triton, model_cache: Path, artifacts: Artifacts, **overrides):
    values = dict(
        triton_model_repository=str(triton.triton_model_repository),
        model_cache_dir=str(model_cache),
        torch_threads=1,
        max_batch_size=8,
        triton=TritonSettings(grpc_url=triton.triton_grpc_url),
        s3=stack.s3_settings(bucket=artifacts.store.bucket),
        kafka=KafkaSettings(
            bootstrap_servers=stack.kafka_bootstrap,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        ),
        grpc=GrpcServerSettings(max_workers=8, grace_seconds=0),
        route_cache_s=0.2,
    )
    values.update(overrides)
    return GatewaySettings(**values)


def start_gateway(
    engine: Engine, settings: GatewaySettings, triton_url: str, artifacts: Artifacts
) -> GatewayEnv:
    apply_migrations(engine, "auth", AUTH_MIGRATIONS)
    app = build_app(settings, engine)
    keys = ApiKeyStore(engine)
    server = GrpcServer(
        settings.grpc,
        [(gateway_pb2_grpc.add_InferenceGatewayServicer_to_server, GatewayServicer(app))],
        service_names=[SERVICE_NAME],
        interceptors=standard_interceptors(keys),
        port=0,
        host="127.0.0.1",
    )
    server.start()
    env = GatewayEnv(app, engine, server, keys, triton_url, artifacts)
    # Events are recorded here; test_gateway_events.py runs the real Kafka publisher.
    app.gateway.events = lambda *event: env.events.append(event)
    return env


@pytest.fixture(scope="module")
def gateway(module_db_url, stack, triton, model_cache, artifacts) -> Iterator[GatewayEnv]:
    """A gateway with acme's "support" use case deployed: a1 on production (client
    apps' default), and tenant globex's "billing" on a2."""
    engine = create_db_engine(module_db_url)
    settings = gateway_settings(stack, triton, model_cache, artifacts)
    env = start_gateway(engine, settings, triton.triton_grpc_url, artifacts)
    try:
        for request in (
            deployment_request("dep-acme-a1", artifacts),
            deployment_request(
                "dep-globex-a2",
                artifacts,
                version="billing-bot:v1",
                artifact="a2",
                tenant="globex",
                use_case="billing",
            ),
        ):
            row = env.deploy(request)
            assert row.status == "live", row.error
        yield env
    finally:
        env.close()
        engine.dispose()


def wait_for(what: str, check: Callable[[], object], timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    try:
        call()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded but an error was expected")


def generate_request(
    use_case: str = "support", prompt: str = PROMPT, *, user_key: str = "", **sampling
) -> gateway_pb2.GenerateRequest:
    sampling.setdefault("max_tokens", 8)
    return gateway_pb2.GenerateRequest(
        use_case=use_case,
        prompt=prompt,
        sampling=gateway_pb2.SamplingParams(**sampling),
        user_key=user_key,
    )
