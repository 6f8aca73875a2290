"""A real comparison, end to end: intake, registry, trainer (API + worker + comparison
collector) and evaluator as processes on the session's Kafka and S3; SmolLM2-135M-Instruct
as the base; LoRA r=4 vs prompt tuning, 8 steps each, evaluated on the shipped `support`
suite (one case per tag), each candidate also served through the session's Triton by the
evaluator's serving probe (adapter on the base, and merged for LoRA); created and read back
through the `posttrain compare` CLI. Slow: two trainings and two evaluations of a 135M
model on CPU."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from posttrain.cli import cli
from posttrain.db import apply_migrations, create_db_engine
from posttrain.rpc import AUTH_MIGRATIONS, ApiKeyStore, make_channel
from posttrain.rpc.healthcheck import check
from posttrain.storage import ArtifactStore
from posttrain.v1 import (
    comparison_pb2,
    comparison_pb2_grpc,
    intake_pb2,
    intake_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

SERVICES = ("intake", "registry", "trainer", "evaluator")
BASE = "smollm2-135m-instruct"
LOOP = "batch_size=4,max_seq_len=256,seed=3"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check_fn, timeout_s: float, every_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check_fn()
        if result:
            return result
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@pytest.fixture
def services(stack, triton, tmp_path: Path):
    """The four services as processes; yields (ports, keys, s3 store); stops them."""
    s3 = stack.s3_settings(bucket=f"cmp-{uuid.uuid4().hex[:10]}")
    store = ArtifactStore.from_settings(s3)
    store.ensure_bucket()
    auth_db = f"sqlite:///{tmp_path / 'auth.sqlite3'}"
    engine = create_db_engine(auth_db)
    apply_migrations(engine, "auth", AUTH_MIGRATIONS)
    keys_store = ApiKeyStore(engine)
    keys = {
        "admin": keys_store.create_key("cmp-admin", ["admin"], "acme"),
        "tess": keys_store.create_key("tess", ["trainer", "uploader", "viewer"], "acme"),
    }
    engine.dispose()
    ports = {name: _free_port() for name in SERVICES}
    common = {
        **os.environ,
        "POSTTRAIN_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "POSTTRAIN_S3_ENDPOINT": s3.endpoint,
        "POSTTRAIN_S3_ACCESS_KEY": s3.access_key,
        "POSTTRAIN_S3_SECRET_KEY": s3.secret_key,
        "POSTTRAIN_S3_SECURE": "false",
        "POSTTRAIN_S3_BUCKET": s3.bucket,
        "POSTTRAIN_AUTH_DB_URL": auth_db,
        "POSTTRAIN_INTAKE_TARGET": f"127.0.0.1:{ports['intake']}",
        "POSTTRAIN_REGISTRY_TARGET": f"127.0.0.1:{ports['registry']}",
        "POSTTRAIN_EVALUATOR_TARGET": f"127.0.0.1:{ports['evaluator']}",
        "POSTTRAIN_REGISTRY_API_KEY": keys["admin"],
        "POSTTRAIN_MAX_CASES_PER_TAG": "1",
        "POSTTRAIN_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "POSTTRAIN_COMPARISON_POLL_S": "1",
        "POSTTRAIN_WORKER_TORCH_THREADS": "2",
        "POSTTRAIN_TORCH_THREADS": "1",
        # The evaluator's serving probe: each candidate timed through Triton, 2 requests a way.
        "POSTTRAIN_TRITON_GRPC_URL": triton.triton_grpc_url,
        "POSTTRAIN_TRITON_MODEL_REPOSITORY": str(triton.triton_model_repository),
        "POSTTRAIN_TRITON_TORCH_THREADS": "1",
        "POSTTRAIN_SERVING_PROBE_REQUESTS": "2",
        "POSTTRAIN_SERVING_PROBE_MAX_NEW_TOKENS": "24",
        "PYTHONUNBUFFERED": "1",
    }
    procs: dict[str, subprocess.Popen] = {}
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        for name in SERVICES:
            env = {
                **common,
                "POSTTRAIN_STATE_DIR": str(tmp_path / name),
                "POSTTRAIN_GRPC_PORT": str(ports[name]),
            }
            log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        for name in SERVICES:

            def healthy(n=name):
                if procs[n].poll() is not None:
                    tail = (logs / f"{n}.log").read_text()[-3000:]
                    raise AssertionError(f"{n} exited {procs[n].returncode}:\n{tail}")
                try:
                    return check(f"127.0.0.1:{ports[n]}", timeout=1.0) == "SERVING"
                except Exception:  # noqa: BLE001 - not up yet
                    return False

            _wait(f"{name} to serve", healthy, 180)
        yield ports, keys, store, logs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_lora_vs_prompt_tuning_on_smollm2_gives_a_complete_report(services, tmp_path):
    from posttrain.demo import dataset
    from posttrain.training.models import export_smollm2_instruct

    ports, keys, store, logs = services
    tess = keys["tess"]

    def channel(service: str):
        return make_channel(f"127.0.0.1:{ports[service]}", api_key=tess)

    weights = store.put_folder(export_smollm2_instruct(), f"base-models/{BASE}")
    registry_pb2_grpc.RegistryServiceStub(channel("registry")).RegisterBaseModel(
        registry_pb2.RegisterBaseModelRequest(name=BASE, source_uri=weights.uri)
    )
    rows = dataset.knowledge_rows() + dataset.policy_rows()
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)

    def upload():
        yield intake_pb2.UploadDatasetRequest(
            metadata=intake_pb2.UploadMetadata(
                dataset="acme-support",
                format=intake_pb2.DATA_FORMAT_JSONL,
                schema=intake_pb2.ROW_SCHEMA_CHAT,
            )
        )
        yield intake_pb2.UploadDatasetRequest(chunk=data)

    version = intake_pb2_grpc.IntakeServiceStub(channel("intake")).UploadDataset(upload()).version

    runner = CliRunner()
    target = ["--target", f"127.0.0.1:{ports['trainer']}", "--api-key", tess]
    result = runner.invoke(
        cli,
        [
            "compare",
            "create",
            "--name",
            "support-bot",
            "--base-model",
            BASE,
            "--dataset",
            "acme-support",
            "--version",
            version.version,
            "--candidate",
            f"lora-r4=lora,method_config.rank=4,method_config.alpha=8,lr=2e-3,{LOOP}",
            "--candidate",
            f"prompt=prompt,method_config.num_virtual_tokens=8,lr=3e-2,{LOOP}",
            "--max-steps",
            "8",
            "--max-candidate-seconds",
            "900",
            "--tenants",
            "1",
            "--json",
            *target,
        ],
    )
    assert result.exit_code == 0, result.output
    created = json.loads(result.output)
    comparison_id = created["id"]
    stub = comparison_pb2_grpc.ComparisonServiceStub(channel("trainer"))

    def completed():
        got = stub.GetComparison(comparison_pb2.GetComparisonRequest(id=comparison_id))
        return got if got.state == comparison_pb2.COMPARISON_STATE_COMPLETED else None

    try:
        got = _wait("the comparison's report", completed, 2000, every_s=5)
    except AssertionError:
        for name in SERVICES:
            print(f"--- {name}\n" + (logs / f"{name}.log").read_text()[-4000:])
        raise
    assert [c.state for c in got.candidates] == [comparison_pb2.CANDIDATE_STATE_MEASURED] * 2
    assert all(c.model_version_id and c.evaluation_report_id for c in got.candidates), got

    out = tmp_path / "report"
    result = runner.invoke(cli, ["compare", "report", comparison_id, "--out", str(out), *target])
    assert result.exit_code == 0, result.output
    print(result.output)
    report = json.loads((out / "comparison_report.json").read_text())
    assert 'src="data:image/png;base64,' in (out / "comparison_report.html").read_text()
    lora, prompt = report["candidates"]
    for c in (lora, prompt):
        assert c["outcome"] == "MEASURED" and c["steps"] == 8
        assert c["suite"].startswith("support@")
        assert "pass_rate" in c["quality"] and c["latency_p50_s"] > 0
        assert c["gate_verdict"] in ("PASS", "FAIL")
        assert c["wall_time_s"] > 0 and c["train_tokens"] > 0 and c["peak_memory_bytes"] > 0
        assert 0 < c["trainable_share"] < 0.05 and c["artifact_bytes"] > 0
    assert lora["trainable_params"] > prompt["trainable_params"]
    assert prompt["serving_options"] == ["adapter"]
    # Served through Triton: LoRA as an adapter and merged, prompt tuning as an adapter only.
    assert sorted(lora["serving"]) == ["adapter", "merged"]
    assert sorted(prompt["serving"]) == ["adapter"]
    for served in [*lora["serving"].values(), *prompt["serving"].values()]:
        assert served["requests"] == 2 and 0 < served["latency_p50_s"] <= served["latency_p95_s"]
    rec = report["recommendation"]
    assert rec["candidate"] in ("lora-r4", "prompt") and rec["method_rule"]
    assert rec["serving"] in ("merged", "adapter") and rec["serving_rule"]
    fired = [r for r in rec["rules"] if r["fired"]]
    assert [r["kind"] for r in fired] == ["method", "serving"]
    print(
        json.dumps(
            {
                "candidates": [
                    {
                        k: c.get(k)
                        for k in (
                            "name",
                            "wall_time_s",
                            "train_tokens",
                            "peak_memory_bytes",
                            "trainable_params",
                            "trainable_share",
                            "artifact_bytes",
                            "latency_p50_s",
                            "serving",
                            "gate_verdict",
                            "first_loss",
                            "final_loss",
                        )
                    }
                    | {"pass_rate": c["quality"].get("pass_rate")}
                    for c in (lora, prompt)
                ],
                "recommendation": {k: rec[k] for k in ("candidate", "serving", "summary")},
            },
            indent=1,
        )
    )
