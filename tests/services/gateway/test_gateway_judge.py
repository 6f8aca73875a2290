"""The experiment judge through the real gateway (tiny model in Triton): with the rule judge
at sample rate 1 every experiment request gets a judge score and the report shows it for
both arms (proto, difference against control, HTML in S3); without a judge the report has
none; a judge that raises fails no request and is counted."""

from __future__ import annotations

import logging
import math
from collections import Counter

import pytest
from click.testing import CliRunner
from conftest import BASE, TUNED_V1, gateway_settings, generate_request, start_gateway

from posttrain.cli import cli
from posttrain.db import create_db_engine
from posttrain.evaluation.judge import RuleJudge
from posttrain.gateway.tables import InferenceRow
from posttrain.storage.ref import parse_s3_uri
from posttrain.v1 import gateway_pb2
from services.gateway.settings import ExperimentJudgeSettings

BASE_VS_TUNED = [
    gateway_pb2.Variant(name="control", model_version_id=f"base:{BASE}", share=0.5),
    gateway_pb2.Variant(name="tuned", model_version_id=TUNED_V1, share=0.5),
]
PROMPTS = ["Hello there, how are", "Where is my parcel", "Reset my password please"]


def judged_experiment(gateway, stack, triton, model_cache, artifacts, users: int, judge=None):
    """A gateway of its own with the rule judge at sample rate 1 (or `judge` in its place)
    serves an experiment of `users` requests; (served per arm, report, grader counts)."""
    settings = gateway_settings(
        stack,
        triton,
        model_cache,
        artifacts,
        experiment_judge=ExperimentJudgeSettings(kind="rule", sample_rate=1.0),
    )
    engine = create_db_engine(gateway.engine.url.render_as_string(hide_password=False))
    env = start_gateway(engine, settings, triton.triton_grpc_url, artifacts)
    if judge is not None:
        env.app.grader.judge = judge
    try:
        experiment_id, served = run_experiment(env, users)  # every request answered
        assert env.app.grader.drain(60)
        return served, report_of(env, experiment_id), dict(env.app.grader.counts)
    finally:
        env.close()
        engine.dispose()


def run_experiment(env, users: int) -> tuple[str, Counter]:
    """An experiment on acme's support route, `users` requests (one per user), feedback."""
    experiment = env.stub("operator@acme").CreateExperiment(
        gateway_pb2.CreateExperimentRequest(use_case="support", variants=BASE_VS_TUNED),
        timeout=30,
    )
    client = env.stub("client@acme")
    served: Counter = Counter()
    for u in range(users):
        request = generate_request(
            prompt=PROMPTS[u % len(PROMPTS)], max_tokens=4, user_key=f"judged-{u}"
        )
        if u % 2:  # half of them as a chat
            request.conversation.messages.add(role="user", content=PROMPTS[u % len(PROMPTS)])
        response = client.Generate(request, timeout=60)
        assert response.experiment_id == experiment.id
        served[response.variant] += 1
        client.RecordFeedback(
            gateway_pb2.RecordFeedbackRequest(request_id=response.request_id, success=True)
        )
    return experiment.id, served


def by_name(report: gateway_pb2.ExperimentReport) -> dict[str, gateway_pb2.VariantStats]:
    return {v.variant: v for v in report.variants}


def report_of(env, experiment_id: str) -> gateway_pb2.ExperimentReport:
    report = env.stub("viewer@acme").GetExperimentReport(
        gateway_pb2.GetExperimentReportRequest(id=experiment_id), timeout=60
    )
    env.stub("operator@acme").StopExperiment(gateway_pb2.StopExperimentRequest(id=experiment_id))
    return report


def test_the_rule_judge_scores_every_request_of_both_arms(
    gateway, stack, triton, model_cache, artifacts
):
    served, report, counts = judged_experiment(gateway, stack, triton, model_cache, artifacts, 16)
    assert min(served.values()) >= 3, served
    assert counts == {"graded": 16}, counts
    by_arm = by_name(report)
    for arm, n in served.items():
        score = by_arm[arm].judge_score
        assert by_arm[arm].HasField("judge_score") and score.n == n == by_arm[arm].requests
        assert 1.0 <= score.mean <= 5.0
    (judged,) = [d for d in by_arm["tuned"].vs_control if d.metric == "judge_score"]
    gap = by_arm["tuned"].judge_score.mean - by_arm["control"].judge_score.mean
    assert judged.control == "control" and judged.difference == pytest.approx(gap)
    assert judged.test and not math.isnan(judged.ci_low)
    judge = RuleJudge()
    assert list(report.judges) == [f"{judge.id}@{judge.version}"]
    bucket, key = parse_s3_uri(report.html_uri)
    html = gateway.artifacts.store.client.get_object(bucket, key).read().decode()
    assert f"{judge.id}@{judge.version}" in html and "judge score" in html
    shown = CliRunner(env={"COLUMNS": "300"}).invoke(
        cli,
        [
            "experiments",
            "report",
            report.experiment.id,
            "--target",
            gateway.server.address,
            "--api-key",
            gateway.key("viewer@acme"),
        ],
    )
    assert shown.exit_code == 0 and "judge (n)" in shown.output, shown.output
    assert f"judge: {judge.id}@{judge.version}" in shown.output
    with gateway.session() as session:
        rows = session.query(InferenceRow).filter(
            InferenceRow.experiment_id == report.experiment.id
        )
        assert {(r.judge_id, r.judge_version) for r in rows} == {(judge.id, judge.version)}


def test_without_a_judge_the_report_has_no_judge_score(gateway):
    assert gateway.app.grader is None  # kind "none" is the default
    experiment_id, served = run_experiment(gateway, 6)
    report = report_of(gateway, experiment_id)
    assert sum(v.requests for v in report.variants) == 6
    assert not any(v.HasField("judge_score") for v in report.variants)
    (judged,) = [d for d in by_name(report)["tuned"].vs_control if d.metric == "judge_score"]
    assert math.isnan(judged.difference)  # no data on either side
    assert list(report.judges) == []


class BrokenJudge:
    id = "broken"
    version = "0"

    def grade(self, request):
        raise TimeoutError("the judge endpoint timed out")

    def compare(self, request):  # pragma: no cover
        raise TimeoutError("the judge endpoint timed out")


def test_a_judge_that_raises_fails_no_request_and_is_counted(
    gateway, stack, triton, model_cache, artifacts, caplog
):
    with caplog.at_level(logging.WARNING, logger="posttrain.gateway.grading"):
        served, report, counts = judged_experiment(
            gateway, stack, triton, model_cache, artifacts, 6, judge=BrokenJudge()
        )
    assert sum(served.values()) == 6 and counts == {"failed": 6}
    assert caplog.text.count("the judge endpoint timed out") == 6
    assert not any(v.HasField("judge_score") for v in report.variants)
