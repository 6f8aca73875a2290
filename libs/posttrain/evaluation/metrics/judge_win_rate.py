"""judge_win_rate: pairwise comparison with the production model's output on the same case,
asked twice with the answers' positions swapped (judge.pairwise). A win counts 1, a tie
(including an inconsistent pair of verdicts) 0.5, a loss 0; the suite value is the
candidate's win rate. Not scored without a judge or a production output for the case.
"""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.evaluation.metrics.base import CaseContext, CaseScore, Metric

_VALUE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


@dataclass(frozen=True)
class JudgeWinRateConfig:
    pass


def score(case, output: str, config: JudgeWinRateConfig, ctx: CaseContext) -> CaseScore:
    from posttrain.evaluation.judge import pairwise

    if ctx.judge is None:
        return CaseScore.skipped("no judge")
    if ctx.production_output is None:
        return CaseScore.skipped("no production output")
    outcome = pairwise(
        ctx.judge,
        prompt=case.messages,
        candidate=output,
        baseline=ctx.production_output,
        reference=case.reference,
        rubric=ctx.rubric,
    )
    return CaseScore(_VALUE[outcome.outcome], outcome.outcome != "loss", outcome.describe())


METRIC = Metric(
    name="judge_win_rate",
    kind="case",
    config=JudgeWinRateConfig,
    help="win rate against production by position-swapped pairwise judging (judge-based)",
    outputs={"judge_win_rate": True},
    score=score,
    judge_based=True,
)
