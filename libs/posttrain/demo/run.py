"""`posttrain demo`: one model change through the whole pipeline, on the embedded stack.

Starts the local stack (Kafka protocol, S3, Triton) and the services as real processes,
then: imports SmolLM2-135M-Instruct as a base model; an upstream system announces the
knowledge-base dataset with a `data.approved` event; a second, regulated version with the
refusal policy is uploaded over gRPC and approved by a second person; a LoRA adapter is
trained (progress bar); the evaluator scores it and gives a gate verdict; the registry
promotes it; the gateway serves it through Triton and runs an A/B test of base vs tuned
with simulated users and feedback. Prints a summary, writes an HTML report, and stops
everything it started.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from posttrain.config import KafkaSettings
from posttrain.db import apply_migrations, create_db_engine
from posttrain.demo import dataset
from posttrain.events import EventProducer, ensure_topics, topics
from posttrain.rpc import AUTH_MIGRATIONS, ApiKeyStore, make_channel
from posttrain.rpc.healthcheck import check
from posttrain.stack import LocalStack, StackPorts
from posttrain.storage import ArtifactStore
from posttrain.v1 import (
    common_pb2,
    evaluation_pb2,
    evaluation_pb2_grpc,
    intake_pb2,
    intake_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)

console = Console()
SERVICES = ("intake", "registry", "trainer", "evaluator", "gateway")
BASE_MODEL = "smollm2-135m-instruct"
DATASET = "acme-support"
MODEL_NAME = "support-bot"
USE_CASE = "support"
TENANT = "acme"


class DemoError(RuntimeError):
    pass


@dataclass
class DemoConfig:
    state_dir: Path
    train_steps: int = 40
    batch_size: int = 8
    lr: float = 2e-3
    eval_cases_per_tag: int = 3
    keep_running: bool = False


@dataclass
class Demo:
    config: DemoConfig
    stack: LocalStack | None = None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    summary: list[tuple[str, str]] = field(default_factory=list)
    report: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ plumbing

    def step(self, title: str) -> None:
        console.rule(f"[bold]{title}")

    def note(self, what: str, result: str) -> None:
        self.summary.append((what, result))
        console.print(f"  [green]✓[/green] {what}: {result}")

    def channel(self, service: str, who: str) -> grpc.Channel:
        return make_channel(f"127.0.0.1:{self.ports[service]}", api_key=self.keys[who])

    def start_stack(self) -> None:
        self.step("1. local stack: Kafka protocol (Tansu), S3 (SeaweedFS), Triton")
        state = self.config.state_dir / "stack"
        self.stack = LocalStack.load_or_create(state, StackPorts.free(), random_secret=True)
        for status in self.stack.up():
            self.note(status.name, status.endpoint)

    def create_keys(self) -> None:
        auth_db = f"sqlite:///{self.config.state_dir / 'auth.sqlite3'}"
        engine = create_db_engine(auth_db)
        apply_migrations(engine, "auth", AUTH_MIGRATIONS)
        store = ApiKeyStore(engine)
        people = {
            "admin": ["admin"],
            "alice": ["uploader", "viewer"],
            "bob": ["approver", "viewer"],
            "trainer": ["trainer", "viewer"],
            "ops": ["operator", "viewer"],
            "app": ["client"],
        }
        for name, roles in people.items():
            self.keys[name] = store.create_key(f"demo-{name}", roles, TENANT)
        engine.dispose()
        self.auth_db = auth_db

    def start_services(self) -> None:
        self.step("2. services: intake, registry, trainer (+ worker), evaluator, gateway")
        self.create_keys()
        for name in SERVICES:
            self.ports[name] = _free_port()
        common = {
            **os.environ,
            **self.stack.service_env(),
            "POSTTRAIN_AUTH_DB_URL": self.auth_db,
            "POSTTRAIN_INTAKE_TARGET": f"127.0.0.1:{self.ports['intake']}",
            "POSTTRAIN_REGISTRY_TARGET": f"127.0.0.1:{self.ports['registry']}",
            "POSTTRAIN_REGISTRY_API_KEY": self.keys["admin"],
            "POSTTRAIN_TRITON_MODEL_REPOSITORY": str(self.stack.triton_model_repository),
            "POSTTRAIN_MAX_CASES_PER_TAG": str(self.config.eval_cases_per_tag),
            "POSTTRAIN_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "POSTTRAIN_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
        logs = self.config.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for name in SERVICES:
            env = {
                **common,
                "POSTTRAIN_STATE_DIR": str(self.config.state_dir / name),
                "POSTTRAIN_GRPC_PORT": str(self.ports[name]),
            }
            log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        for name in SERVICES:
            _wait(
                lambda n=name: self._healthy(n),
                120,
                f"{name} did not become healthy; see {logs / (name + '.log')}",
            )
            self.note(name, f"127.0.0.1:{self.ports[name]} (log {logs / (name + '.log')})")

    def _healthy(self, name: str) -> bool:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise DemoError(
                f"{name} exited with code {proc.returncode}; "
                f"see {self.config.state_dir / 'logs' / (name + '.log')}"
            )
        try:
            return check(f"127.0.0.1:{self.ports[name]}", timeout=1.0) == "SERVING"
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if self.stack is not None:
            self.stack.down()

    # ------------------------------------------------------------------ the flow

    def import_base_model(self) -> None:
        self.step("3. base model: SmolLM2-135M-Instruct (offline) into the registry")
        from posttrain.training.models import export_smollm2_instruct

        folder = export_smollm2_instruct()
        store = ArtifactStore.from_settings(self.stack.s3_settings())
        store.ensure_bucket()
        ref = store.put_folder(folder, f"base-models/{BASE_MODEL}")
        stub = registry_pb2_grpc.RegistryServiceStub(self.channel("registry", "trainer"))
        base = stub.RegisterBaseModel(
            registry_pb2.RegisterBaseModelRequest(name=BASE_MODEL, source_uri=ref.uri)
        )
        self.note("base model", f"{base.name} ({base.architecture}, {base.parameters:,} params)")

    def announce_upstream_dataset(self) -> str:
        self.step("4. upstream system announces the knowledge-base data (Kafka data.approved)")
        rows = dataset.knowledge_rows()
        data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
        store = ArtifactStore.from_settings(self.stack.s3_settings(bucket="upstream-exports"))
        store.ensure_bucket()
        key = "support/acme-kb-2026-11-29.jsonl"
        store.client.put_object("upstream-exports", key, io.BytesIO(data), len(data))
        event = {
            "event_id": f"crm-export-{hashlib.sha256(data).hexdigest()[:12]}",
            "dataset": DATASET,
            "uri": f"s3://upstream-exports/{key}",
            "format": "jsonl",
            "schema": "chat",
            "sha256": hashlib.sha256(data).hexdigest(),
            "approved_by": "dana@acme.example",
            "approved_at": "2026-11-29T09:00:00Z",
            "source": "acme-crm-export",
            "tenant": TENANT,
            "labels": {"team": "support"},
        }
        kafka = KafkaSettings(bootstrap_servers=self.stack.kafka_bootstrap)
        ensure_topics(kafka, [topics.DATA_APPROVED])
        with EventProducer(kafka, producer_name="acme-crm") as producer:
            producer.send_raw(
                topics.DATA_APPROVED,
                DATASET.encode(),
                json.dumps(event).encode(),
                [("content-type", b"application/json")],
            )
        stub = intake_pb2_grpc.IntakeServiceStub(self.channel("intake", "alice"))
        version = _wait(
            lambda: _first_version(stub),
            90,
            "intake did not register the announced dataset; see the intake log",
        )
        state = common_pb2.ApprovalState.Name(version.state)
        self.note(
            "dataset v1 (upstream)",
            f"{version.version[:12]} {state}, {version.rows} rows, approved by {version.approved_by}",
        )
        return version.version

    def upload_regulated_version(self, parent: str) -> str:
        self.step("5. the team adds the refusal policy: a regulated upload, four-eyes approval")
        rows = dataset.knowledge_rows() + dataset.policy_rows()
        data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
        alice = intake_pb2_grpc.IntakeServiceStub(self.channel("intake", "alice"))

        def requests():
            yield intake_pb2.UploadDatasetRequest(
                metadata=intake_pb2.UploadMetadata(
                    dataset=DATASET,
                    format=intake_pb2.DATA_FORMAT_JSONL,
                    schema=intake_pb2.ROW_SCHEMA_CHAT,
                    regulated=True,
                    parent_version=parent,
                    description="Acme Router X2 support answers and refusal policy",
                )
            )
            for start in range(0, len(data), 64 * 1024):
                yield intake_pb2.UploadDatasetRequest(chunk=data[start : start + 64 * 1024])

        resp = alice.UploadDataset(requests())
        version = resp.version.version
        self.note(
            "dataset v2 uploaded by alice",
            f"{version[:12]} PENDING_APPROVAL, {resp.version.rows} rows",
        )
        review = intake_pb2.ReviewDatasetRequest(
            dataset=DATASET, version=version, reason="reviewed the policy rows"
        )
        try:
            intake_pb2_grpc.IntakeServiceStub(self.channel("intake", "alice")).ApproveDataset(
                review
            )
            raise DemoError("the uploader could approve her own upload: four-eyes rule broken")
        except grpc.RpcError as exc:
            self.note("alice approves her own upload", f"refused ({exc.code().name})")
        bob = intake_pb2_grpc.IntakeServiceStub(self.channel("intake", "bob"))
        approved = bob.ApproveDataset(review)
        self.note("bob approves", common_pb2.ApprovalState.Name(approved.state))
        return version

    def train(self, version: str) -> str:
        self.step("6. LoRA fine-tuning on the approved version (training worker)")
        stub = training_pb2_grpc.TrainingServiceStub(self.channel("trainer", "trainer"))
        job = stub.SubmitJob(
            training_pb2.SubmitJobRequest(
                base_model=BASE_MODEL,
                dataset=DATASET,
                dataset_version=version,
                method=common_pb2.TUNING_METHOD_LORA,
                output_name=MODEL_NAME,
                hyperparameters={
                    "max_steps": str(self.config.train_steps),
                    "batch_size": str(self.config.batch_size),
                    "lr": str(self.config.lr),
                    "warmup_steps": "4",
                    "max_seq_len": "384",
                    "method_config.rank": "16",
                    "method_config.alpha": "32",
                    "method_config.target_modules": "all-linear",
                    "eval_every": "20",
                    "checkpoint_every": "20",
                },
            )
        )
        with Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            TextColumn("step {task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("train", total=self.config.train_steps, loss="-")
            final = None
            for p in stub.WatchJob(training_pb2.GetJobRequest(job_id=job.job_id)):
                if p.total_steps:
                    bar.update(task, total=p.total_steps)
                bar.update(task, completed=p.step, loss=f"{p.loss:.3f}" if p.loss else "-")
                final = p
        done = stub.GetJob(training_pb2.GetJobRequest(job_id=job.job_id))
        state = training_pb2.JobState.Name(done.state)
        if done.state != training_pb2.JOB_STATE_SUCCEEDED:
            raise DemoError(f"training job {job.job_id} ended {state}: {done.error}")
        self.report["loss"] = final.loss if final else None
        self.note(
            "training job",
            f"{job.job_id[:8]} {state} after {done.step} steps, loss {done.last_loss:.3f}",
        )
        return job.job_id

    def wait_for_model_and_verdict(self) -> tuple[str, evaluation_pb2.EvaluationReport]:
        self.step("7. registry registers the version; evaluator scores it (release gate)")
        registry = registry_pb2_grpc.RegistryServiceStub(self.channel("registry", "ops"))
        version = _wait(
            lambda: next(
                iter(
                    registry.ListModelVersions(
                        registry_pb2.ListModelVersionsRequest(name=MODEL_NAME)
                    ).versions
                ),
                None,
            ),
            120,
            "the registry did not register the trained model; see the registry log",
        )
        self.note(
            "model version",
            f"{version.id} ({registry_pb2.ModelKind.Name(version.kind) if hasattr(registry_pb2, 'ModelKind') else version.kind})",
        )
        evaluator = evaluation_pb2_grpc.EvaluationServiceStub(self.channel("evaluator", "ops"))
        report = _wait(
            lambda: next(
                iter(
                    evaluator.ListReports(
                        evaluation_pb2.ListReportsRequest(model_version_id=version.id)
                    ).reports
                ),
                None,
            ),
            600,
            "no evaluation report arrived; see the evaluator log",
        )
        verdict = common_pb2.GateVerdict.Name(report.verdict)
        self.note("gate verdict", verdict)
        for reason in report.reasons[:12]:
            console.print(f"      - {reason}")
        return version.id, report

    def promote(self, version_id: str, report) -> None:
        self.step("8. promotion to production (gate enforced; override needs operator + reason)")
        registry = registry_pb2_grpc.RegistryServiceStub(self.channel("registry", "ops"))
        request = registry_pb2.PromoteRequest(
            model_version_id=version_id,
            use_case=USE_CASE,
            tenant=TENANT,
            stage=registry_pb2.STAGE_PRODUCTION,
        )
        try:
            alias = registry.Promote(request)
            self.note("promoted", f"{USE_CASE}/production -> {alias.model_version_id}")
        except grpc.RpcError as exc:
            self.note("promotion refused by the gate", exc.details()[:160])
            request.override_gate = True
            request.reason = (
                "demo: the 40-step CPU adapter is promoted for the walkthrough despite the gate"
            )
            alias = registry.Promote(request)
            self.note(
                "promoted with an audited override",
                f"{USE_CASE}/production -> {alias.model_version_id}",
            )


def _first_version(stub):
    try:
        versions = stub.ListVersions(intake_pb2.ListVersionsRequest(dataset=DATASET)).versions
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return versions[0] if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(probe: Callable[[], object], timeout_s: float, message: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise DemoError(message)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_demo(config: DemoConfig) -> int:
    demo = Demo(config)
    started = time.monotonic()
    # SIGTERM like Ctrl-C: the finally below stops every process the demo started.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        demo.start_stack()
        demo.start_services()
        demo.import_base_model()
        v1 = demo.announce_upstream_dataset()
        v2 = demo.upload_regulated_version(v1)
        demo.train(v2)
        version_id, report = demo.wait_for_model_and_verdict()
        demo.promote(version_id, report)
    except (DemoError, grpc.RpcError) as exc:
        detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
        console.print(f"[red]demo failed:[/red] {detail}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping everything the demo started[/yellow]")
        return 130
    finally:
        if not config.keep_running:
            demo.stop()
    console.rule("summary")
    for what, result in demo.summary:
        console.print(f"{what:<32} {result}")
    console.print(f"finished in {time.monotonic() - started:.0f} s; state in {config.state_dir}")
    return 0
