"""token_f1: SQuAD token F1 between the output and the best-matching reference."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from posttrain.evaluation.metrics.base import CaseContext, CaseScore, Metric, setting
from posttrain.evaluation.metrics.text import check_text_reference, references, tokens


@dataclass(frozen=True)
class TokenF1Config:
    normalise: bool = setting(True, "tokenise SQuAD-normalised text")
    drop_articles: bool = setting(True, "with normalise: ignore a/an/the")
    pass_threshold: float = setting(0.5, "a case passes when its F1 is at least this")


def f1(prediction: list[str], reference: list[str]) -> float:
    """Harmonic mean of token precision and recall (multiset overlap); 1.0 when both are
    empty, 0.0 when only one is."""
    if not prediction or not reference:
        return float(prediction == reference)
    same = sum((Counter(prediction) & Counter(reference)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction), same / len(reference)
    return 2 * precision * recall / (precision + recall)


def best_f1(
    output: str, refs: list[str], *, normalise: bool = True, drop_articles: bool = True
) -> float:
    def tok(text: str) -> list[str]:
        return tokens(text, normalise=normalise, drop_articles=drop_articles)

    return max((f1(tok(output), tok(ref)) for ref in refs), default=0.0)


def score(case, output: str, config: TokenF1Config, ctx: CaseContext) -> CaseScore:
    value = best_f1(
        output,
        references(case.reference),
        normalise=config.normalise,
        drop_articles=config.drop_articles,
    )
    return CaseScore(value, value >= config.pass_threshold)


METRIC = Metric(
    name="token_f1",
    kind="case",
    config=TokenF1Config,
    help="token-overlap F1 with the best reference (0..1)",
    outputs={"token_f1": True},
    score=score,
    check_case=check_text_reference,
)
