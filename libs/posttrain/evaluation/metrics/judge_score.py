"""judge_score: the judge's 1-5 grade of the output against the suite's rubric.

Judge-based: a gate counts it only when the judge is trusted (gate.py). Not scored
(value None) when the run has no judge or the judge's reply has no grade in it.
"""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.evaluation.metrics.base import CaseContext, CaseScore, Metric, setting


@dataclass(frozen=True)
class JudgeScoreConfig:
    pass_score: int = setting(4, "a case passes when its grade is at least this (1..5)")


def score(case, output: str, config: JudgeScoreConfig, ctx: CaseContext) -> CaseScore:
    from posttrain.evaluation.judge import GradeRequest

    if ctx.judge is None:
        return CaseScore.skipped("no judge")
    grade = ctx.judge.grade(
        GradeRequest(
            prompt=case.messages, answer=output, reference=case.reference, rubric=ctx.rubric
        )
    )
    if grade.score is None:
        return CaseScore.skipped(f"no grade in the judge's reply: {grade.raw[:80]!r}")
    return CaseScore(float(grade.score), grade.score >= config.pass_score, grade.rationale[:200])


METRIC = Metric(
    name="judge_score",
    kind="case",
    config=JudgeScoreConfig,
    help="the judge's grade 1..5 of the output, by the suite's rubric (judge-based)",
    outputs={"judge_score": True},
    score=score,
    judge_based=True,
)
