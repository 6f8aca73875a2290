"""exact_match: the normalised output equals a normalised reference (any of them)."""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.evaluation.metrics.base import CaseContext, CaseScore, Metric, setting
from posttrain.evaluation.metrics.text import check_text_reference, normalize, references


@dataclass(frozen=True)
class ExactMatchConfig:
    normalise: bool = setting(True, "compare SQuAD-normalised text (case, punctuation, spaces)")
    drop_articles: bool = setting(True, "with normalise: ignore a/an/the")


def score(case, output: str, config: ExactMatchConfig, ctx: CaseContext) -> CaseScore:
    def norm(text: str) -> str:
        return normalize(text, drop_articles=config.drop_articles) if config.normalise else text

    hit = any(norm(output) == norm(ref) for ref in references(case.reference))
    return CaseScore(1.0 if hit else 0.0, hit)


METRIC = Metric(
    name="exact_match",
    kind="case",
    config=ExactMatchConfig,
    help="1 when the (normalised) output equals a reference, else 0",
    outputs={"exact_match": True},
    score=score,
    check_case=check_text_reference,
)
