"""ComparisonService on the trainer: CreateComparison's refusals (every problem named by
its place, nothing recorded), candidates trained by the ordinary workers, the collector
(with stand-ins for the registry and the evaluator) following them to a complete report,
budgets, tenants, and a second pass or a second collector changing nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import grpc
import pytest
from sqlalchemy.orm import Session
from trainer_helpers import APPROVED_VERSION, BASE_MODEL, PENDING_VERSION, rpc_error, wait_for

from posttrain.comparison.runs import CollectorOptions, ComparisonCollector
from posttrain.comparison.tables import ComparisonRow
from posttrain.config import GrpcServerSettings
from posttrain.rpc import GrpcServer, make_channel, standard_interceptors
from posttrain.rpc.errors import field_violations
from posttrain.trainer import TrainingJobRow
from posttrain.v1 import (
    common_pb2,
    comparison_pb2,
    comparison_pb2_grpc,
    evaluation_pb2,
    registry_pb2,
)
from services.trainer.comparisons import SERVICE_NAME, ComparisonServicer, migrate, outbox_emit

LORA, PROMPT = common_pb2.TUNING_METHOD_LORA, common_pb2.TUNING_METHOD_PROMPT
LOOP = {"batch_size": "4", "lr": "5e-3", "seed": "7"}


@dataclass
class FakeVersions:
    """The registry: a version for every job that succeeded, once asked `after` times."""

    calls: list = field(default_factory=list)

    def version_for_job(self, name, job_id, tenant):
        self.calls.append((name, job_id, tenant))
        return registry_pb2.ModelVersion(
            id=f"{name}:v1", name=name, lineage=common_pb2.Lineage(training_job_id=job_id)
        )


@dataclass
class FakeReports:
    """The evaluator: a report per version; the prompt candidates score lower."""

    missing: bool = False

    def report_for(self, model_version_id, tenant):
        if self.missing:
            return None
        score = 0.4 if "prompt" in model_version_id else 0.6
        return evaluation_pb2.EvaluationReport(
            id=f"rep-{model_version_id.split(':')[0][-6:]}",
            model_version_id=model_version_id,
            suite="support",
            suite_version="f" * 64,
            verdict=common_pb2.GATE_VERDICT_FAIL,
            reasons=["pass_rate below 0.8"],
            metrics=[
                evaluation_pb2.MetricValue(name="pass_rate", value=score),
                evaluation_pb2.MetricValue(name="judge_score", value=2.5),
                evaluation_pb2.MetricValue(name="latency_p50_s", value=0.05),
                evaluation_pb2.MetricValue(name="pass_rate", tag="policy", value=0.0),
            ],
        )


@dataclass
class Comparisons:
    trainer: object
    server: GrpcServer
    versions: FakeVersions
    reports: FakeReports

    def stub(self, who: str) -> comparison_pb2_grpc.ComparisonServiceStub:
        channel = make_channel(self.server.address, api_key=self.trainer.keys[who])
        self.trainer.channels.append(channel)
        return comparison_pb2_grpc.ComparisonServiceStub(channel)

    def collector(self, **options) -> ComparisonCollector:
        return ComparisonCollector(
            engine=self.trainer.engine,
            store=self.trainer.store,
            versions=self.versions,
            reports=self.reports,
            emit_for=outbox_emit,
            options=CollectorOptions(**options),
        )

    def request(self, **overrides) -> comparison_pb2.CreateComparisonRequest:
        values = dict(
            name="support-bot",
            base_model=BASE_MODEL,
            dataset="support",
            dataset_version=APPROVED_VERSION,
            candidates=[
                comparison_pb2.CandidateSpec(
                    name="lora-r2", method=LORA, method_config={"rank": "2"}, hyperparameters=LOOP
                ),
                comparison_pb2.CandidateSpec(
                    name="prompt",
                    method=PROMPT,
                    method_config={"num_virtual_tokens": "4"},
                    hyperparameters=LOOP,
                ),
            ],
            budget=comparison_pb2.ComparisonBudget(max_steps=3),
            serving=comparison_pb2.ServingContext(tenants=1),
        )
        values.update(overrides)
        return comparison_pb2.CreateComparisonRequest(**values)


def _comparisons(trainer) -> Comparisons:
    migrate(trainer.engine)
    servicer = ComparisonServicer(
        trainer.settings, trainer.engine, trainer.store, trainer.intake, trainer.registry
    )
    server = GrpcServer(
        GrpcServerSettings(port=0, grace_seconds=0),
        [(comparison_pb2_grpc.add_ComparisonServiceServicer_to_server, servicer)],
        service_names=[SERVICE_NAME],
        interceptors=standard_interceptors(trainer.key_store),
        port=0,
        host="127.0.0.1",
    )
    server.start()
    return Comparisons(trainer, server, FakeVersions(), FakeReports())


@pytest.fixture
def comparisons(trainer):
    env = _comparisons(trainer)
    yield env
    env.server.stop(grace=0)


@pytest.fixture
def sqlite_comparisons(sqlite_trainer):
    env = _comparisons(sqlite_trainer)
    yield env
    env.server.stop(grace=0)


def _count(engine, row) -> int:
    with Session(engine) as session:
        return session.query(row).count()


def test_create_names_every_bad_argument_and_records_nothing(comparisons):
    stub = comparisons.stub("alice")
    bad = comparisons.request(
        candidates=[
            comparison_pb2.CandidateSpec(
                name="ok", method=LORA, hyperparameters={"max_steps": "9"}
            ),
            comparison_pb2.CandidateSpec(name="Bad Name", method=LORA),
            comparison_pb2.CandidateSpec(name="r", method=LORA, method_config={"rank": "many"}),
            comparison_pb2.CandidateSpec(name="nomethod"),
            comparison_pb2.CandidateSpec(name="lr", method=PROMPT, hyperparameters={"lr": "x"}),
        ],
        budget=comparison_pb2.ComparisonBudget(max_steps=5, max_total_wall_s=-1),
        rules_yaml="method_rules:\n  - {name: a, recommend: sideways}\nserving_rules: []\n",
    )
    err = rpc_error(lambda: stub.CreateComparison(bad))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in field_violations(err)}
    assert fields == {
        "candidates[0].hyperparameters.max_steps",
        "candidates[1].name",
        "candidates[2].method_config.rank",
        "candidates[3].method",
        "candidates[4].hyperparameters.lr",
        "budget.max_total_wall_s",
        "rules_yaml.method_rules[0].recommend",
        "rules_yaml.serving_rules",
    }
    err = rpc_error(
        lambda: stub.CreateComparison(comparisons.request(dataset_version=PENDING_VERSION))
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    err = rpc_error(lambda: comparisons.stub("eve").CreateComparison(comparisons.request()))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _count(comparisons.trainer.engine, ComparisonRow) == 0
    assert _count(comparisons.trainer.engine, TrainingJobRow) == 0

    # A good one: one ordinary job per candidate, named after the comparison.
    created = stub.CreateComparison(comparisons.request())
    assert created.state == comparison_pb2.COMPARISON_STATE_RUNNING
    assert [c.output_name for c in created.candidates] == [
        f"support-bot-cmp-{created.id[:8]}-lora-r2",
        f"support-bot-cmp-{created.id[:8]}-prompt",
    ]
    job = comparisons.trainer.job(created.candidates[0].job_id)
    assert (job.method, job.state, job.tenant) == ("lora", "QUEUED", "acme")
    assert "max_steps: 3" in job.config_yaml and "rank: 2" in job.config_yaml
    # Tenants: another tenant's comparison does not exist for mallory; admin sees it.
    err = rpc_error(
        lambda: comparisons.stub("mallory").GetComparison(
            comparison_pb2.GetComparisonRequest(id=created.id)
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    listed = comparisons.stub("root").ListComparisons(comparison_pb2.ListComparisonsRequest())
    assert [c.id for c in listed.comparisons] == [created.id]
    assert (
        comparisons.stub("mallory")
        .ListComparisons(comparison_pb2.ListComparisonsRequest())
        .comparisons
        == []
    )
    err = rpc_error(
        lambda: stub.GetComparisonReport(comparison_pb2.GetComparisonRequest(id=created.id))
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_candidates_train_and_the_collector_writes_the_report_once(sqlite_comparisons):
    env = sqlite_comparisons
    env.trainer.start_worker("w1")
    stub = env.stub("alice")
    created = stub.CreateComparison(env.request())
    collector = env.collector(poll_s=0.2)

    def done():
        collector.run_once()
        return stub.GetComparison(comparison_pb2.GetComparisonRequest(id=created.id)).state == (
            comparison_pb2.COMPARISON_STATE_COMPLETED
        )

    wait_for("the comparison to complete", done, timeout_s=240, every_s=0.3)
    got = stub.GetComparison(comparison_pb2.GetComparisonRequest(id=created.id))
    assert [c.state for c in got.candidates] == [comparison_pb2.CANDIDATE_STATE_MEASURED] * 2
    assert got.candidates[0].model_version_id == f"{got.candidates[0].output_name}:v1"
    assert got.candidates[0].gate_verdict == common_pb2.GATE_VERDICT_FAIL
    assert got.recommended_candidate == "lora-r2" and got.recommended_serving == "merged"
    assert "lora-or-qlora" in got.recommendation

    report = stub.GetComparisonReport(comparison_pb2.GetComparisonRequest(id=created.id))
    data = json.loads(report.report_json)
    lora, prompt = data["candidates"]
    assert (lora["steps"], prompt["steps"]) == (3, 3)
    for c in (lora, prompt):
        assert c["wall_time_s"] > 0 and c["train_tokens"] > 0
        assert c["trainable_params"] > 0 and c["total_params"] > c["trainable_params"]
        assert c["peak_memory_bytes"] > 0 and c["artifact_bytes"] > 0
        assert c["quality"]["pass_rate"] in (0.4, 0.6) and "policy" not in str(c["quality"])
    assert lora["serving_options"] == ["adapter", "merged"]
    assert prompt["serving_options"] == ["adapter"]
    assert data["recommendation"]["method_rule"] == "lora-or-qlora"
    assert b"data:image/png;base64," in report.html
    assert report.report.uri.endswith(f"comparisons/acme/{created.id}/report/manifest.json")

    # Done is done: another pass, or a second collector, changes nothing.
    assert collector.run_once() == [] and env.collector().advance(created.id) is False
    again = stub.GetComparisonReport(comparison_pb2.GetComparisonRequest(id=created.id))
    assert again.report.sha256 == report.report.sha256


def test_the_total_budget_cancels_what_has_not_run(sqlite_comparisons):
    env = sqlite_comparisons  # no worker: the jobs stay QUEUED
    stub = env.stub("alice")
    created = stub.CreateComparison(
        env.request(budget=comparison_pb2.ComparisonBudget(max_steps=3, max_total_wall_s=0.01))
    )
    collector = env.collector()
    # Passes as the collector's loop makes them: the first cancels the jobs over the total
    # budget, a later one sees them cancelled and completes the comparison (two passes on an
    # idle machine; more were needed once on a loaded one).
    wait_for(
        "the comparison to complete over its total budget",
        lambda: created.id in collector.run_once(),
        timeout_s=60,
        every_s=0.2,
    )
    got = stub.GetComparison(comparison_pb2.GetComparisonRequest(id=created.id))
    assert got.state == comparison_pb2.COMPARISON_STATE_COMPLETED
    assert [c.state for c in got.candidates] == [comparison_pb2.CANDIDATE_STATE_OUT_OF_BUDGET] * 2
    assert "total time budget" in got.candidates[0].note
    assert env.trainer.job(got.candidates[0].job_id).state == "CANCELLED"
    assert got.recommended_candidate == "" and "nothing to recommend" in got.recommendation


def test_the_cli_creates_shows_and_lists(sqlite_comparisons):
    from click.testing import CliRunner

    from posttrain.cli import cli

    env = sqlite_comparisons
    runner = CliRunner()
    target = ["--target", env.server.address, "--api-key", env.trainer.keys["alice"]]
    create = [
        "compare",
        "create",
        "--name",
        "support-bot",
        "--base-model",
        BASE_MODEL,
        "--dataset",
        "support",
        "--version",
        APPROVED_VERSION,
        "--max-steps",
        "3",
    ]
    usage = runner.invoke(cli, [*create, "--candidate", "x=sideways", *target])
    assert usage.exit_code == 2 and "NAME=METHOD" in usage.output
    refused = runner.invoke(
        cli, [*create, "--candidate", "r=lora,method_config.rank=many", *target]
    )
    assert refused.exit_code == 1
    assert "candidates[0].method_config.rank" in refused.output

    made = runner.invoke(
        cli,
        [
            *create,
            "--candidate",
            "lora-r2=lora,method_config.rank=2",
            "--candidate",
            "prompt=prompt",
            "--set",
            "lr=1e-3",
            "--tenants",
            "4",
            "--json",
            *target,
        ],
    )
    assert made.exit_code == 0, made.output
    created = json.loads(made.output)
    assert created["serving"]["tenants"] == 4
    assert created["candidates"][0]["spec"]["method_config"] == {"rank": "2"}
    assert created["candidates"][1]["spec"]["hyperparameters"] == {"lr": "1e-3"}
    shown = runner.invoke(cli, ["compare", "show", created["id"], *target])
    assert shown.exit_code == 0 and "RUNNING" in shown.output and "lora-r2" in shown.output
    listed = runner.invoke(cli, ["compare", "list", *target])
    assert listed.exit_code == 0 and created["id"] in listed.output
    early = runner.invoke(cli, ["compare", "report", created["id"], *target])
    assert early.exit_code == 1 and "FAILED_PRECONDITION" in early.output


def test_a_candidate_without_an_evaluation_is_measured_after_the_timeout(sqlite_comparisons):
    env = sqlite_comparisons
    env.trainer.start_worker("w1")

    class DownRegistry:
        def version_for_job(self, name, job_id, tenant):
            raise RuntimeError("registry at 127.0.0.1:1 is UNAVAILABLE")

    env.versions = DownRegistry()
    stub = env.stub("alice")
    created = stub.CreateComparison(env.request(candidates=env.request().candidates[:1]))
    collector = env.collector(evaluation_timeout_s=0.0)

    def done():
        collector.run_once()
        got = stub.GetComparison(comparison_pb2.GetComparisonRequest(id=created.id))
        return got if got.state == comparison_pb2.COMPARISON_STATE_COMPLETED else None

    got = wait_for("the comparison to complete", done, timeout_s=240, every_s=0.3)
    [cand] = got.candidates
    assert cand.state == comparison_pb2.CANDIDATE_STATE_MEASURED
    assert "not evaluated" in cand.note and "UNAVAILABLE" in cand.note
    report = json.loads(
        stub.GetComparisonReport(comparison_pb2.GetComparisonRequest(id=created.id)).report_json
    )
    [measured] = report["candidates"]
    assert measured["quality"] == {} and measured["wall_time_s"] > 0
    # No quality number: no rule on one holds; the fallback still names the candidate.
    assert report["recommendation"]["method_rule"] == "best-measured-quality"
    assert report["recommendation"]["candidate"] == "lora-r2"
