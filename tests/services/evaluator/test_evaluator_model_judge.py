"""Judge kind "model": a registered model version as the judge, loaded here once, over a
LocalHFGenerator; calibrated on the tenant's anchors and named in the report."""

from __future__ import annotations

from dataclasses import replace

from posttrain.evaluation import JudgeConfig, LLMJudge
from posttrain.evaluation.judge import GradeRequest, parse_score
from posttrain.evaluator import EvaluationRequest, ModelUnderTest


def test_a_registered_model_judges_calibrates_and_is_named_in_the_report(evaluator):
    registry = evaluator.registry
    evaluator = evaluator.evaluator  # the service's core
    evaluator.config = replace(
        evaluator.config, judge=JudgeConfig(kind="model", model="base:v1", max_tokens=8)
    )

    judge = evaluator.judge(registry)
    assert isinstance(judge, LLMJudge) and judge.id == "model:base:v1"
    assert evaluator.judge(registry) is judge  # loaded once
    grade = judge.grade(GradeRequest(prompt=[{"role": "user", "content": "Hi"}], answer="Hello"))
    assert grade.score == parse_score(grade.raw)  # a random model's words: None, kept raw

    _, suite, _ = evaluator.resolve_suite()
    calibration = evaluator.calibration("acme", suite, judge)
    assert calibration is not None and calibration.n == 3  # the suite's seed anchors
    assert calibration.judge_id == judge.id and not calibration.trusted
    assert evaluator.calibration("acme", suite, judge) == calibration  # cached

    row = evaluator.run(
        EvaluationRequest(ModelUnderTest.from_version(registry.versions["bot:v1"])), registry
    )
    assert (row.judge_id, row.judge_version) == (judge.id, judge.version)
    assert row.anchor_set_version == calibration.anchor_set_version
