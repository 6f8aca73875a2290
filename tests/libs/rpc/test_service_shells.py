"""`python -m services.<name>` boots for real: settings from the environment, SQLite under
a temporary state directory, auth migrations, health, auth, and a clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from rpc_probe import free_port, scrape_metrics

from posttrain.rpc import make_channel
from posttrain.v1 import (
    evaluation_pb2,
    evaluation_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    intake_pb2,
    intake_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)

REPO = Path(__file__).resolve().parents[3]
BOOTSTRAP_KEY = "pt_testadmin_not-a-real-secret-0123456789"

# service -> (full gRPC service name, a call of one of its RPCs on a channel)
SERVICES = {
    "intake": (
        "posttrain.v1.IntakeService",
        lambda ch: intake_pb2_grpc.IntakeServiceStub(ch).GetDataset(
            intake_pb2.GetDatasetRequest(), timeout=5
        ),
    ),
    "trainer": (
        "posttrain.v1.TrainingService",
        lambda ch: training_pb2_grpc.TrainingServiceStub(ch).GetJob(
            training_pb2.GetJobRequest(), timeout=5
        ),
    ),
    "evaluator": (
        "posttrain.v1.EvaluationService",
        lambda ch: evaluation_pb2_grpc.EvaluationServiceStub(ch).GetReport(
            evaluation_pb2.GetReportRequest(), timeout=5
        ),
    ),
    "registry": (
        "posttrain.v1.RegistryService",
        lambda ch: registry_pb2_grpc.RegistryServiceStub(ch).GetAlias(
            registry_pb2.GetAliasRequest(), timeout=5
        ),
    ),
    "gateway": (
        "posttrain.v1.InferenceGateway",
        lambda ch: gateway_pb2_grpc.InferenceGatewayStub(ch).GetExperimentReport(
            gateway_pb2.GetExperimentReportRequest(), timeout=5
        ),
    ),
}


def healthcheck(port: int, service: str = "") -> int:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "posttrain.rpc.healthcheck",
            "--port",
            str(port),
            "--service",
            service,
        ],
        capture_output=True,
        timeout=60,
    ).returncode


def code_of(call, channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call(channel)
    return err.value.code()


@contextmanager
def running_service(name: str, tmp_path: Path, **extra_env: str) -> Iterator[tuple[int, Path]]:
    """`python -m services.<name>` on a free port, SQLite under tmp_path, JSON logs to a
    file: (port, log file) once SERVING; then SIGTERM, which it must answer with exit 0."""
    port = free_port()
    env = os.environ | {
        "POSTTRAIN_GRPC_PORT": str(port),
        "POSTTRAIN_STATE_DIR": str(tmp_path / "state"),
        "POSTTRAIN_BOOTSTRAP_ADMIN_KEY": BOOTSTRAP_KEY,
        "POSTTRAIN_LOG_FORMAT": "json",
        **extra_env,
    }
    env.pop("POSTTRAIN_DB_URL", None)
    env.pop("POSTTRAIN_AUTH_DB_URL", None)
    log_path = tmp_path / "service.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"], cwd=REPO, env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 60
        while healthcheck(port) != 0:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "service did not become SERVING in 60 s"
            time.sleep(0.2)
        yield port, log_path
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_boots_serves_and_stops_on_sigterm(name, tmp_path):
    full_name, call = SERVICES[name]
    with running_service(name, tmp_path) as (port, log_path):
        assert healthcheck(port, full_name) == 0

        with make_channel(f"127.0.0.1:{port}") as anonymous:
            assert code_of(call, anonymous) == grpc.StatusCode.UNAUTHENTICATED
            assert full_name in ProtoReflectionDescriptorDatabase(anonymous).get_services()
        with make_channel(f"127.0.0.1:{port}", api_key=BOOTSTRAP_KEY) as admin:
            # Authenticated: a shell answers with the generated default, an implemented
            # RPC refuses the empty request.
            assert code_of(call, admin) in (
                grpc.StatusCode.UNIMPLEMENTED,
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.NOT_FOUND,
            )

    db = tmp_path / "state" / f"{name}.sqlite3"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, roles, secret_sha256 FROM api_keys").fetchall()
    assert [(key_id, roles) for key_id, roles, _ in rows] == [("testadmin", "admin")]
    assert "not-a-real-secret" not in repr(rows)
    assert f'"service": "{name}"' in log_path.read_text()


def test_a_service_serves_its_metrics_on_metrics_port(tmp_path):
    """POSTTRAIN_METRICS_PORT turns /metrics on; each call is counted by its status, and
    the JSON log line of a call carries the caller's correlation id."""
    metrics_port = free_port()
    with running_service(
        "registry",
        tmp_path,
        POSTTRAIN_METRICS_PORT=str(metrics_port),
        POSTTRAIN_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",  # none: it retries
    ) as (port, log_path):
        with make_channel(f"127.0.0.1:{port}", api_key=BOOTSTRAP_KEY) as admin:
            stub = registry_pb2_grpc.RegistryServiceStub(admin)
            stub.ListBaseModels(registry_pb2.ListBaseModelsRequest(), timeout=10)
            stub.ListBaseModels(registry_pb2.ListBaseModelsRequest(), timeout=10)
            with pytest.raises(grpc.RpcError) as err:
                stub.GetModelVersion(
                    registry_pb2.GetModelVersionRequest(id="mv-metrics-test"),
                    metadata=[("x-correlation-id", "metrics-test-7")],
                    timeout=10,
                )
        samples = scrape_metrics(metrics_port)

    def requests_total(method: str, code: str) -> float | None:
        labels = {"service": "posttrain.v1.RegistryService", "method": method, "code": code}
        return samples.get(("posttrain_grpc_requests_total", tuple(sorted(labels.items()))))

    assert requests_total("ListBaseModels", "OK") == 2
    assert err.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    assert requests_total("GetModelVersion", err.value.code().name) == 1
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert any(
        line["correlation_id"] == "metrics-test-7" and "GetModelVersion" in line["message"]
        for line in lines
    ), lines[-5:]
