"""The fault-injection suite's pipeline: the real local stack (Tansu, SeaweedFS, Triton),
the five services as OS processes (posttrain.stack.services), a tiny random Llama as the
base model, and one table of faults that is printed at the end of the run.

Each service starts with one crash point armed (POSTTRAIN_FAULT_CRASH_AT, see
posttrain.faults), firing once (POSTTRAIN_FAULT_MARKER_DIR); the tests in
test_fault_flow.py drive one change through the pipeline, kill or crash a process at each
step, start it again with the same environment, and count what came out.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from faults_helpers import BASE_MODEL, CRASH_POINTS, TABLE, TENANT, Pipeline

from posttrain.db import apply_migrations, create_db_engine
from posttrain.rpc import AUTH_MIGRATIONS, ApiKeyStore
from posttrain.stack import LocalStack, StackPorts
from posttrain.stack.services import SERVICES, ServiceProcesses
from posttrain.storage import ArtifactStore
from posttrain.training import make_tiny_model
from posttrain.v1 import registry_pb2, registry_pb2_grpc


def pytest_terminal_summary(terminalreporter) -> None:
    if TABLE.rows:
        terminalreporter.section("fault injection")
        for line in TABLE.lines():
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory) -> Iterator[LocalStack]:
    """A LocalStack of the suite's own (free ports): it restarts the broker and S3, which
    must not pull the session's stack from under other modules' tests."""
    local = LocalStack(state_dir=tmp_path_factory.mktemp("fault-stack"), ports=StackPorts.free())
    try:
        local.up()
        yield local
    finally:
        local.down()


@pytest.fixture(scope="module")
def pipeline(fault_stack: LocalStack, tmp_path_factory) -> Iterator[Pipeline]:
    local = fault_stack
    state = tmp_path_factory.mktemp("faults")
    engine = create_db_engine(f"sqlite:///{state / 'auth.sqlite3'}")
    apply_migrations(engine, "auth", AUTH_MIGRATIONS)
    key_store = ApiKeyStore(engine)
    keys = {
        "admin": key_store.create_key("faults-admin", ["admin"], TENANT),
        "alice": key_store.create_key("faults-alice", ["uploader", "viewer"], TENANT),
        "ops": key_store.create_key("faults-ops", ["operator", "trainer", "viewer"], TENANT),
    }
    engine.dispose()
    markers = state / "fault-markers"
    markers.mkdir()
    bucket = "faults"
    services = ServiceProcesses(
        local,
        state,
        common_env={
            "POSTTRAIN_S3_BUCKET": bucket,
            "POSTTRAIN_AUTH_DB_URL": f"sqlite:///{state / 'auth.sqlite3'}",
            "POSTTRAIN_REGISTRY_API_KEY": keys["admin"],
            "POSTTRAIN_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "POSTTRAIN_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
            "POSTTRAIN_FAULT_MARKER_DIR": str(markers),
            # Small and quick on 2 shared cores.
            "POSTTRAIN_MAX_CASES_PER_TAG": "1",
            "POSTTRAIN_TORCH_THREADS": "1",
            "POSTTRAIN_WORKER_TORCH_THREADS": "1",
            "POSTTRAIN_WORKER_HEARTBEAT_INTERVAL_S": "0.5",
            "POSTTRAIN_WORKER_STALE_AFTER_S": "3",
            "POSTTRAIN_WORKER_SCAN_INTERVAL_S": "0.5",
            "POSTTRAIN_MODEL_DEVICE": "cpu",
            "POSTTRAIN_MODEL_DTYPE": "float32",
            "POSTTRAIN_EVALUATE_PRODUCTION_BASELINE": "false",
            "POSTTRAIN_RECONCILE_INTERVAL_S": "5",
        },
    )
    store = ArtifactStore.from_settings(local.s3_settings(bucket=bucket))
    store.ensure_bucket()
    pipe = Pipeline(local, services, keys, store, state, TABLE)
    try:
        for name in SERVICES:
            services.start(name, {"POSTTRAIN_FAULT_CRASH_AT": CRASH_POINTS.get(name, "")})
        folder = make_tiny_model(state / "models" / BASE_MODEL, seed=0)
        ref = store.put_folder(folder, f"base-models/{BASE_MODEL}")
        services.wait_healthy(timeout_s=240)
        registry = registry_pb2_grpc.RegistryServiceStub(pipe.channel("registry", "ops"))
        registry.RegisterBaseModel(
            registry_pb2.RegisterBaseModelRequest(name=BASE_MODEL, source_uri=ref.uri)
        )
        yield pipe
    finally:
        for channel in pipe.channels:
            channel.close()
        services.stop()
