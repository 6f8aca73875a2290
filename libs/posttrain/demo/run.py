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
import signal
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from posttrain.cli.serve import wait_for_deployment
from posttrain.config import KafkaSettings
from posttrain.correlation import correlation_scope
from posttrain.db import apply_migrations, create_db_engine
from posttrain.demo import dataset, users
from posttrain.demo.report import DemoReport, write_report
from posttrain.events import EventProducer, ensure_topics, topics
from posttrain.rpc import AUTH_MIGRATIONS, ApiKeyStore, make_channel
from posttrain.stack import LocalStack, StackPorts
from posttrain.stack.services import SERVICES, ServiceProcesses, ServiceStartError
from posttrain.storage import ArtifactRef, ArtifactStore
from posttrain.v1 import (
    common_pb2,
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

console = Console()
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
    ab_users: int = 64  # simulated users in the A/B test, half per arm
    ab_min_sample: int = 24  # feedback records per arm before the report gives a verdict
    max_answer_tokens: int = 80
    # An evaluation, the base evaluation or a deployment may take this long (s): minutes on
    # 2 idle cores, many more on a shared, busy machine.
    long_step_timeout_s: float = 1800.0
    keep_running: bool = False


@dataclass(frozen=True)
class DemoOutcome:
    """What the run made, for the summary and for tests to check against the services."""

    dataset_versions: tuple[str, str]  # upstream v1, regulated v2
    job_id: str
    model_version_id: str
    evaluation_report_id: str
    experiment_id: str
    correlation_id: str  # of the change from the regulated upload to the deployment
    report_path: Path


@dataclass
class Demo:
    config: DemoConfig
    stack: LocalStack | None = None
    services: ServiceProcesses | None = None
    ports: dict[str, int] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    summary: list[tuple[str, str]] = field(default_factory=list)
    report: DemoReport = field(default_factory=DemoReport)
    correlation_id: str = ""
    promoted_at: float = 0.0

    # ------------------------------------------------------------------ plumbing

    def step(self, title: str) -> None:
        console.rule(f"[bold]{title}")

    def note(self, what: str, result: str) -> None:
        self.summary.append((what, result))
        self.report.steps.append((what, result))
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
        self.services = ServiceProcesses(
            self.stack,
            self.config.state_dir,
            common_env={
                "POSTTRAIN_AUTH_DB_URL": self.auth_db,
                "POSTTRAIN_REGISTRY_API_KEY": self.keys["admin"],
                "POSTTRAIN_MAX_CASES_PER_TAG": str(self.config.eval_cases_per_tag),
                "POSTTRAIN_KAFKA_SESSION_TIMEOUT_MS": "6000",
                "POSTTRAIN_LOG_FORMAT": "json",
                # The walkthrough's A/B test is small: a verdict after this many records per arm.
                "POSTTRAIN_EXPERIMENT_MIN_SAMPLE": str(self.config.ab_min_sample),
            },
        )
        self.ports, self.metrics_ports = self.services.ports, self.services.metrics_ports
        for name in SERVICES:
            self.services.start(name)
        for name in SERVICES:
            log = self.services.log_path(name)
            try:
                self.services.wait_healthy([name], timeout_s=120)
            except ServiceStartError as exc:
                raise DemoError(str(exc)) from None
            self.note(
                name,
                f"127.0.0.1:{self.ports[name]}, metrics "
                f"http://127.0.0.1:{self.metrics_ports[name]}/metrics, log {log}",
            )

    def stop(self) -> None:
        if self.services is not None:
            self.services.stop()
        if self.stack is not None:
            self.stack.down()

    # ------------------------------------------------------------------ the flow

    def run(self) -> DemoOutcome:
        """Every step in order; raises DemoError / grpc.RpcError at the first that fails.
        Stops nothing: the caller calls stop()."""
        started = time.monotonic()
        self.report.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.start_stack()
        self.start_services()
        self.import_base_model()
        v1 = self.announce_upstream_dataset()
        # One correlation id for the team's change, from the upload to the deployment: every
        # RPC sends it, the events carry it, each service logs it (README: Observability).
        with correlation_scope() as change_id:
            self.correlation_id = change_id
            v2 = self.upload_regulated_version(v1)
            job_id = self.train(v2)
            version_id, report = self.wait_for_model_and_verdict()
            self.evaluate_base(report)
            self.promote(version_id, report)
            self.serve(version_id)
        experiment_id = self.ab_test(version_id)
        self.trace(change_id)
        return DemoOutcome(
            dataset_versions=(v1, v2),
            job_id=job_id,
            model_version_id=version_id,
            evaluation_report_id=report.id,
            experiment_id=experiment_id,
            correlation_id=change_id,
            report_path=self.write_report(started),
        )

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
            for p in stub.WatchJob(training_pb2.GetJobRequest(job_id=job.job_id)):
                if p.total_steps:
                    bar.update(task, total=p.total_steps)
                bar.update(task, completed=p.step, loss=f"{p.loss:.3f}" if p.loss else "-")
        done = stub.GetJob(training_pb2.GetJobRequest(job_id=job.job_id))
        state = training_pb2.JobState.Name(done.state)
        if done.state != training_pb2.JOB_STATE_SUCCEEDED:
            raise DemoError(f"training job {job.job_id} ended {state}: {done.error}")
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
        self.note("model version", f"{version.id} ({common_pb2.ModelKind.Name(version.kind)})")
        self.read_training_report(version)
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
            self.config.long_step_timeout_s,
            "no evaluation report arrived; see the evaluator log",
        )
        # The registry learns the verdict from evaluation.completed; promotion checks it there.
        _wait(
            lambda: (
                registry.GetModelVersion(
                    registry_pb2.GetModelVersionRequest(id=version.id)
                ).gate_verdict
            ),
            120,
            "the registry did not record the gate verdict; see the registry log",
        )
        verdict = common_pb2.GateVerdict.Name(report.verdict)
        self.note("gate verdict", verdict)
        for reason in report.reasons[:12]:
            console.print(f"      - {reason}")
        self.report.verdict = verdict
        self.report.reasons = list(report.reasons)
        return version.id, report

    def read_training_report(self, version: registry_pb2.ModelVersion) -> None:
        """The loss curve, from the training report the trainer published (last artifact)."""
        store = ArtifactStore.from_settings(self.stack.s3_settings())
        with tempfile.TemporaryDirectory() as tmp:
            folder = store.download_folder(
                ArtifactRef.from_proto(version.artifacts[-1]), Path(tmp) / "report"
            )
            training = json.loads((folder / "training_report.json").read_text())
        self.report.loss = [(h["step"], h["loss"]) for h in training.get("history", [])]
        self.report.eval_loss = [
            (h["step"], h["eval_loss"]) for h in training.get("eval_history", [])
        ]

    def evaluate_base(self, tuned: evaluation_pb2.EvaluationReport) -> None:
        self.step("8. the base model on the same suite: base vs tuned side by side")
        evaluator = evaluation_pb2_grpc.EvaluationServiceStub(self.channel("evaluator", "ops"))
        base = evaluator.RunEvaluation(
            evaluation_pb2.RunEvaluationRequest(
                # The suite's stored version as the tuned model's evaluation took it (its
                # report names the version of the cases it ran: a subset per tag here).
                model_version_id=f"base:{BASE_MODEL}",
                suite=tuned.suite,
                seed=tuned.seed,
            ),
            timeout=self.config.long_step_timeout_s,
        )
        overall = {
            "base": {m.name: m.value for m in base.metrics if not m.tag},
            "tuned": {m.name: m.value for m in tuned.metrics if not m.tag},
        }
        names = [n for n in overall["tuned"] if n in overall["base"]]
        self.report.comparison = {
            n: {"base": overall["base"][n], "tuned": overall["tuned"][n]} for n in names
        }
        console.print(f"      {'metric':<22}{'base':>10}{'tuned':>10}")
        for n in names:
            console.print(f"      {n:<22}{overall['base'][n]:>10.3f}{overall['tuned'][n]:>10.3f}")
        self.note(
            "base vs tuned",
            ", ".join(
                f"{n} {overall['base'][n]:.2f} -> {overall['tuned'][n]:.2f}"
                for n in ("pass_rate", "regex_match", "refusal")
                if n in overall["base"] and n in overall["tuned"]
            ),
        )

    def promote(self, version_id: str, report) -> None:
        self.step("9. promotion to production (gate enforced; override needs operator + reason)")
        self.promoted_at = time.time() - 1.0
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

    def serve(self, version_id: str) -> None:
        self.step("10. serving: the gateway loads the adapter into Triton; a client app asks")
        # Promotion asked the gateway (deployment.requested) to serve the version.
        deployment = wait_for_deployment(
            gateway_pb2_grpc.InferenceGatewayStub(self.channel("gateway", "ops")),
            route=USE_CASE,
            model_version_id=version_id,
            since=self.promoted_at,
            timeout_s=self.config.long_step_timeout_s,
        )
        if deployment is None or deployment.state != gateway_pb2.DEPLOYMENT_STATE_LIVE:
            reason = deployment.error if deployment else "not live in time"
            raise DemoError(f"the gateway did not serve {version_id}: {reason}; see its log")
        self.note(
            "deployment live",
            f"{deployment.id[:8]} {deployment.triton_model} lora {deployment.lora_name}",
        )
        app = gateway_pb2_grpc.InferenceGatewayStub(self.channel("gateway", "app"))
        for question in users.questions()[:: max(1, len(users.questions()) // 3)][:3]:
            answer = app.Generate(self._request(question, "demo-app"), timeout=120)
            console.print(f"      [bold]Q:[/bold] {question.text}")
            console.print(
                f"      [bold]A:[/bold] {answer.text}  [dim]({answer.latency_ms:.0f} ms)[/dim]"
            )
        self.note("gateway answers", f"use case {USE_CASE!r} -> {version_id}")

    def _request(self, question: users.Question, user_key: str) -> gateway_pb2.GenerateRequest:
        return gateway_pb2.GenerateRequest(
            use_case=USE_CASE,
            conversation=gateway_pb2.Conversation(
                messages=[gateway_pb2.ChatMessage(**m) for m in question.conversation()]
            ),
            sampling=gateway_pb2.SamplingParams(max_tokens=self.config.max_answer_tokens),
            user_key=user_key,
        )

    def ab_test(self, version_id: str) -> str:
        self.step("11. A/B test in live traffic: base vs tuned, simulated users give feedback")
        ops = gateway_pb2_grpc.InferenceGatewayStub(self.channel("gateway", "ops"))
        experiment = ops.CreateExperiment(
            gateway_pb2.CreateExperimentRequest(
                use_case=USE_CASE,
                variants=[
                    gateway_pb2.Variant(
                        name="base", model_version_id=f"base:{BASE_MODEL}", share=0.5
                    ),
                    gateway_pb2.Variant(name="tuned", model_version_id=version_id, share=0.5),
                ],
            )
        )
        self.note("experiment", f"{experiment.id[:8]} base 50% / tuned 50%")
        app = gateway_pb2_grpc.InferenceGatewayStub(self.channel("gateway", "app"))
        answers: dict[tuple[str, str], str] = {}

        def one_user(session: tuple[str, users.Question]) -> str:
            user_key, question = session
            response = app.Generate(self._request(question, user_key), timeout=300)
            verdict = users.judge_answer(question, response.text)
            app.RecordFeedback(
                gateway_pb2.RecordFeedbackRequest(
                    request_id=response.request_id,
                    success=verdict.success,
                    policy_incident=verdict.policy_incident,
                    human_intervention=verdict.human_intervention,
                    rating=verdict.rating,
                )
            )
            answers.setdefault((question.case_id, response.variant), response.text)
            return response.variant

        sessions = users.sessions(self.config.ab_users)
        with (
            Progress(
                TextColumn("[bold]simulated users"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeRemainingColumn(),
                console=console,
            ) as bar,
            ThreadPoolExecutor(4) as pool,
        ):
            task = bar.add_task("users", total=len(sessions))
            for _ in pool.map(one_user, sessions):
                bar.advance(task)
        report = ops.GetExperimentReport(gateway_pb2.GetExperimentReportRequest(id=experiment.id))
        arms = []
        for v in report.variants:
            arms.append(
                {
                    "variant": v.variant,
                    "requests": v.requests,
                    "success_rate": v.success_rate,
                    "success_ci_low": v.success_ci_low,
                    "success_ci_high": v.success_ci_high,
                    "policy_incident_rate": v.policy_incident_rate,
                    "policy_incident_ci_low": v.policy_incident_ci_low,
                    "policy_incident_ci_high": v.policy_incident_ci_high,
                    "intervention_rate": v.intervention_rate,
                    "latency_p50_ms": v.latency_p50_ms,
                    "cost_per_successful_task": v.cost_per_successful_task,
                }
            )
            self.note(
                f"arm {v.variant}",
                f"{v.requests} requests, success {v.success_rate:.0%}, "
                f"policy incidents {v.policy_incident_rate:.0%}, p50 {v.latency_p50_ms:.0f} ms",
            )
        self.report.experiment = {"id": experiment.id, "verdict": report.verdict, "arms": arms}
        self.note("experiment verdict", report.verdict)
        cases = sorted({case for case, _ in answers})
        by_id = {q.case_id: q for q in users.questions()}
        self.report.samples = [
            {"prompt": by_id[c].text, "base": answers[(c, "base")], "tuned": answers[(c, "tuned")]}
            for c in cases
            if (c, "base") in answers and (c, "tuned") in answers
        ][:8]
        ops.StopExperiment(gateway_pb2.StopExperimentRequest(id=experiment.id))
        return experiment.id

    def trace(self, correlation_id: str) -> None:
        """Where the change's correlation id shows up: log lines per service, and what
        each service's /metrics counted."""
        self.step("12. observability: one correlation id across the services, Prometheus metrics")
        lines = self.log_lines(correlation_id)
        self.note(
            f"correlation id {correlation_id[:12]}",
            ", ".join(f"{name} {len(found)} lines" for name, found in lines.items()),
        )
        gateway = _scrape(self.metrics_ports["gateway"])
        served = sum(
            v for k, v in gateway.items() if k.startswith("posttrain_gateway_requests_total{")
        )
        trainer = _scrape(self.metrics_ports["trainer"])
        steps = sum(v for k, v in trainer.items() if k.startswith("posttrain_trainer_steps_total"))
        self.note("metrics", f"gateway served {served:.0f} requests; trainer ran {steps:.0f} steps")

    def log_lines(self, correlation_id: str) -> dict[str, list[dict]]:
        """Each service's JSON log lines that carry `correlation_id`."""
        found: dict[str, list[dict]] = {}
        for name in SERVICES:
            path = self.config.state_dir / "logs" / f"{name}.log"
            found[name] = []
            for line in path.read_text(errors="replace").splitlines():
                if correlation_id not in line or not line.startswith("{"):
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("correlation_id") == correlation_id:
                    found[name].append(record)
        return found

    def write_report(self, started: float) -> Path:
        self.report.duration_s = time.monotonic() - started
        return write_report(self.report, self.config.state_dir / "report")


def _first_version(stub):
    try:
        versions = stub.ListVersions(intake_pb2.ListVersionsRequest(dataset=DATASET)).versions
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return versions[0] if versions else None


def _scrape(port: int) -> dict[str, float]:
    """A /metrics page as {"name{labels}": value} (Prometheus text format)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


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
    """The demo from the command line: the flow, the summary, everything stopped after
    (unless keep_running). Exit code 0, 1 (a step failed), 130 (interrupted)."""
    demo = Demo(config)
    # SIGTERM like Ctrl-C: the finally below stops every process the demo started.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        outcome = demo.run()
    except (DemoError, grpc.RpcError) as exc:
        detail = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.RpcError) else exc
        console.print(f"[red]demo failed:[/red] {detail}")
        console.print(f"logs: {config.state_dir / 'logs'}")
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
    console.print(f"finished in {demo.report.duration_s:.0f} s; state in {config.state_dir}")
    console.print(f"report: {outcome.report_path}")
    return 0
