"""The demo's flow end to end on the real local stack and the five service processes,
checked through the services' own APIs after it ran (not from the demo's printout)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from posttrain.demo import users
from posttrain.demo.run import BASE_MODEL, DATASET, TENANT, USE_CASE, Demo, DemoConfig, DemoOutcome
from posttrain.v1 import (
    common_pb2,
    evaluation_pb2,
    evaluation_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    intake_pb2,
    intake_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

HOUSE_FORMAT = re.compile(r"^(ANSWER|REFUSE): [^|\n]+ \| REF-(KB|POLICY)-\d{3}")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Iterator[tuple[Demo, DemoOutcome]]:
    demo = Demo(DemoConfig(state_dir=tmp_path_factory.mktemp("demo")))
    try:
        outcome = demo.run()
        yield demo, outcome
    finally:
        demo.stop()


def test_both_dataset_versions_are_approved(demo_run):
    demo, outcome = demo_run
    intake = intake_pb2_grpc.IntakeServiceStub(demo.channel("intake", "alice"))
    versions = {
        v.version: v
        for v in intake.ListVersions(intake_pb2.ListVersionsRequest(dataset=DATASET)).versions
    }
    upstream, regulated = (versions[v] for v in outcome.dataset_versions)
    assert upstream.state == regulated.state == common_pb2.APPROVAL_STATE_APPROVED
    assert regulated.approved_by == "demo-bob" and regulated.rows > upstream.rows


def test_training_job_finished_every_step_and_the_loss_fell(demo_run):
    demo, outcome = demo_run
    trainer = training_pb2_grpc.TrainingServiceStub(demo.channel("trainer", "trainer"))
    job = trainer.GetJob(training_pb2.GetJobRequest(job_id=outcome.job_id))
    assert job.state == training_pb2.JOB_STATE_SUCCEEDED
    assert job.step == demo.config.train_steps
    losses = [loss for _, loss in demo.report.loss]
    assert len(losses) == demo.config.train_steps
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_gate_verdict_and_the_base_comparison_are_recorded(demo_run):
    demo, outcome = demo_run
    evaluator = evaluation_pb2_grpc.EvaluationServiceStub(demo.channel("evaluator", "ops"))
    report = evaluator.GetReport(evaluation_pb2.GetReportRequest(id=outcome.evaluation_report_id))
    assert report.model_version_id == outcome.model_version_id
    assert report.verdict in (common_pb2.GATE_VERDICT_PASS, common_pb2.GATE_VERDICT_FAIL)
    assert report.reasons
    base = evaluator.ListReports(
        evaluation_pb2.ListReportsRequest(model_version_id=f"base:{BASE_MODEL}")
    ).reports
    assert base and base[0].suite_version == report.suite_version
    # The adapter learnt the house format: the base never writes it.
    assert (
        demo.report.comparison["regex_match"]["base"]
        < demo.report.comparison["regex_match"]["tuned"]
    )


def test_deployment_is_live_and_answers_in_the_adapters_house_format(demo_run):
    demo, outcome = demo_run
    ops = gateway_pb2_grpc.InferenceGatewayStub(demo.channel("gateway", "ops"))
    live = [
        d
        for d in ops.ListDeployments(gateway_pb2.ListDeploymentsRequest(tenant=TENANT)).deployments
        if d.live and d.use_case == USE_CASE
    ]
    assert [d.model_version_id for d in live] == [outcome.model_version_id]
    assert live[0].lora_name
    app = gateway_pb2_grpc.InferenceGatewayStub(demo.channel("gateway", "app"))
    questions = users.questions()[:6]
    answers = [app.Generate(demo._request(q, "e2e-check"), timeout=120) for q in questions]
    assert {a.deployment_id for a in answers} == {live[0].id}
    in_format = [a.text for a in answers if HOUSE_FORMAT.match(a.text.strip())]
    assert len(in_format) >= 4, [a.text for a in answers]


def test_experiment_report_has_both_arms_with_feedback(demo_run):
    demo, outcome = demo_run
    ops = gateway_pb2_grpc.InferenceGatewayStub(demo.channel("gateway", "ops"))
    report = ops.GetExperimentReport(
        gateway_pb2.GetExperimentReportRequest(id=outcome.experiment_id)
    )
    arms = {v.variant: v for v in report.variants}
    assert set(arms) == {"base", "tuned"}
    assert sum(a.requests for a in arms.values()) == demo.config.ab_users
    assert all(a.feedback_count == a.requests > 0 for a in arms.values())
    assert arms["tuned"].success_rate > arms["base"].success_rate
    assert report.verdict


def test_html_report_is_written_with_its_plots(demo_run):
    _, outcome = demo_run
    page = outcome.report_path.read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "A/B test" in page and "base vs tuned" in page


def test_one_correlation_id_follows_the_change_through_every_service(demo_run):
    demo, outcome = demo_run
    lines = demo.log_lines(outcome.correlation_id)
    assert {name for name, found in lines.items() if found} == {
        "intake",
        "trainer",
        "registry",
        "evaluator",
        "gateway",
    }
    assert {r["service"] for found in lines.values() for r in found} == set(lines)


def test_stop_leaves_nothing_running(demo_run):
    demo, _ = demo_run
    demo.stop()  # what the demo does at its end; the fixture's second stop is a no-op
    assert demo.services is not None and demo.services.procs
    assert all(proc.poll() is not None for proc in demo.services.procs.values())
    assert not [s.name for s in demo.stack.status() if s.running]
