"""The evaluator service for real: its servicer in a GrpcServer on a free port with the
standard interceptors and API keys, on SQLite and PostgreSQL, models and reports in the
session's S3 server; and (module-scoped, for the Kafka tests) the same evaluator with
its event runtime consuming model.registered from the session's broker. The registry
is a stand-in (FakeRegistry).

Models are tiny random Llamas (SmolLM2's tokenizer cut to 1024 ids, hidden 64, 2
layers): a base (also registered as a full model), a second one with other weights, a
LoRA adapter on the base, and a folder transformers can't load. Generation is 6 tokens
a case, four cases a suite. Torch gets one thread: the development machines have 2
cores shared by several people.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from evaluator_helpers import (
    BASE_MODEL,
    FAILING_GATE,
    KIND_ADAPTER,
    KIND_FULL,
    KIND_MERGED,
    FakeRegistry,
    suite_files,
)
from sqlalchemy import Engine

from posttrain.config import GrpcServerSettings, KafkaSettings
from posttrain.db import apply_migrations, create_db_engine, session_scope
from posttrain.evaluator import Evaluator, EvaluatorConfig, ModelLoader, SuiteCatalog
from posttrain.events import EventRuntime, topics
from posttrain.rpc import (
    AUTH_MIGRATIONS,
    ApiKeyStore,
    GrpcServer,
    make_channel,
    standard_interceptors,
)
from posttrain.storage import ArtifactRef, ArtifactStore
from posttrain.training import make_tiny_model
from posttrain.v1 import evaluation_pb2_grpc, registry_pb2
from services.evaluator.handlers import on_model_registered
from services.evaluator.servicer import SERVICE_NAME, EvaluationServicer, migrate
from services.evaluator.settings import EvaluatorSettings

torch.set_num_threads(1)


# ---------------------------------------------------------------- models


@dataclass
class ModelFolders:
    base: Path
    other: Path
    adapter: Path
    broken: Path


@pytest.fixture(scope="session")
def model_folders(tmp_path_factory: pytest.TempPathFactory) -> ModelFolders:
    from peft import LoraConfig, get_peft_model

    from posttrain.training.inference import load_trained_model

    root = tmp_path_factory.mktemp("eval-models")
    base = make_tiny_model(root / "tiny-a", seed=0)
    other = make_tiny_model(root / "tiny-b", seed=1)
    model, _ = load_trained_model(base)
    torch.manual_seed(3)
    # Random B (init_lora_weights=False): the adapter changes the outputs, like a trained one.
    peft = get_peft_model(
        model,
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    peft.save_pretrained(root / "adapter")
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    return ModelFolders(base, other, root / "adapter", broken)


@pytest.fixture(scope="module")
def store(module_store: ArtifactStore) -> ArtifactStore:
    """The module's own bucket (tests/conftest.py module_store)."""
    return module_store


@dataclass
class Artifacts:
    base: ArtifactRef  # the base model's weights (also a full model)
    other: ArtifactRef  # a full model with other weights
    adapter: ArtifactRef  # LoRA on the base
    broken: ArtifactRef  # a "merged" folder transformers can't load


@pytest.fixture(scope="module")
def artifacts(store: ArtifactStore, model_folders: ModelFolders) -> Artifacts:
    return Artifacts(
        base=store.put_folder(model_folders.base, f"base-models/{BASE_MODEL}"),
        other=store.put_folder(model_folders.other, "models/acme/other/job-2/attempt-1/full"),
        adapter=store.put_folder(model_folders.adapter, "models/acme/bot/job-1/attempt-1/adapter"),
        broken=store.put_folder(model_folders.broken, "models/acme/broken/job-3/attempt-1/merged"),
    )


def fake_registry(artifacts: Artifacts) -> FakeRegistry:
    """bot:v1 (adapter on the base), bot:v2 (other weights, full), twin:v1 (bot:v1's
    artifacts again), base:v1 (the base as a full model), broken:v1, and globex's gx:v1."""
    registry = FakeRegistry()
    registry.bases[BASE_MODEL] = registry_pb2.BaseModel(
        name=BASE_MODEL, weights=artifacts.base.to_proto()
    )
    registry.add_version("bot:v1", artifacts.adapter, kind=KIND_ADAPTER)
    registry.add_version("bot:v2", artifacts.other, kind=KIND_FULL)
    registry.add_version("twin:v1", artifacts.adapter, kind=KIND_ADAPTER)
    registry.add_version("base:v1", artifacts.base, kind=KIND_FULL)
    registry.add_version("broken:v1", artifacts.broken, kind=KIND_MERGED)
    registry.add_version("gx:v1", artifacts.base, kind=KIND_FULL, tenant="globex")
    return registry


def make_evaluator(
    engine: Engine, store: ArtifactStore, tmp: Path, *, suite: str = "smoke-pass"
) -> Evaluator:
    migrate(engine)
    settings = EvaluatorSettings(
        suite=suite, review_sample_size=2, batch_size=4, max_seq_len=512, state_dir=str(tmp)
    )
    config: EvaluatorConfig = settings.evaluator_config()
    catalog = SuiteCatalog(store, engine)
    evaluator = Evaluator(
        engine, store, catalog, ModelLoader(store, tmp / "cache"), config, code_version="test"
    )
    with session_scope(engine) as session:
        catalog.upload(session, suite_files("smoke-pass"), uploaded_by="setup")
        catalog.upload(session, suite_files("smoke-fail", gate=FAILING_GATE), uploaded_by="setup")
    return evaluator


# ---------------------------------------------------------------- the service over gRPC


@dataclass
class EvaluatorEnv:
    engine: Engine
    server: GrpcServer
    evaluator: Evaluator
    registry: FakeRegistry
    store: ArtifactStore
    keys: dict[str, str]
    channels: list = field(default_factory=list)

    def stub(self, who: str | None) -> evaluation_pb2_grpc.EvaluationServiceStub:
        channel = make_channel(self.server.address, api_key=self.keys[who] if who else None)
        self.channels.append(channel)
        return evaluation_pb2_grpc.EvaluationServiceStub(channel)


@pytest.fixture
def evaluator(db_url: str, store: ArtifactStore, artifacts: Artifacts, tmp_path: Path):
    engine = create_db_engine(db_url)
    apply_migrations(engine, "auth", AUTH_MIGRATIONS)
    key_store = ApiKeyStore(engine)
    keys = {
        "olivia": key_store.create_key("olivia", ["operator"], "acme"),
        "trent": key_store.create_key("trent", ["trainer"], "acme"),
        "rita": key_store.create_key("rita", ["rater"], "acme"),
        "vic": key_store.create_key("vic", ["viewer"], "acme"),
        "mallory": key_store.create_key("mallory", ["operator", "rater"], "globex"),
        "root": key_store.create_key("root", ["admin"], "acme"),
    }
    core = make_evaluator(engine, store, tmp_path)
    registry = fake_registry(artifacts)
    server = GrpcServer(
        GrpcServerSettings(port=0, grace_seconds=0),
        [
            (
                evaluation_pb2_grpc.add_EvaluationServiceServicer_to_server,
                EvaluationServicer(EvaluatorSettings(), engine, core, registry),
            )
        ],
        service_names=[SERVICE_NAME],
        interceptors=standard_interceptors(key_store),
        port=0,
        host="127.0.0.1",
    )
    server.start()
    env = EvaluatorEnv(engine, server, core, registry, store, keys)
    try:
        yield env
    finally:
        for channel in env.channels:
            channel.close()
        server.stop(grace=0)
        engine.dispose()


# ---------------------------------------------------------------- with the broker


@dataclass
class LiveEvaluator:
    engine: Engine
    evaluator: Evaluator
    registry: FakeRegistry
    runtime: EventRuntime
    kafka: KafkaSettings


@pytest.fixture(scope="module")
def live(module_db_url: str, store, artifacts, stack, tmp_path_factory) -> Iterator[LiveEvaluator]:
    # Short session timeout: Tansu's first group join takes about half of it.
    kafka = KafkaSettings(
        bootstrap_servers=stack.kafka_bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=1000
    )
    engine = create_db_engine(module_db_url)
    core = make_evaluator(engine, store, tmp_path_factory.mktemp("live"))
    registry = fake_registry(artifacts)
    runtime = EventRuntime(
        kafka,
        engine,
        service_name="evaluator",
        group_id=f"evaluator-test-{uuid.uuid4().hex[:8]}",
        handlers={
            topics.MODEL_REGISTERED: lambda event, ctx: on_model_registered(
                core, registry, event, ctx
            )
        },
    ).start()
    try:
        assert runtime.ready.wait(60), "the evaluator's event runtime did not start"
        yield LiveEvaluator(engine, core, registry, runtime, kafka)
    finally:
        runtime.stop()
        engine.dispose()
