"""rouge_l: ROUGE-L F-measure (longest common subsequence of tokens), computed here.

P = LCS / len(output), R = LCS / len(reference), F = (1 + b^2) P R / (R + b^2 P), the
sentence-level ROUGE-L of Lin (2004). Tokens are lower-cased words without punctuation;
articles are kept (unlike exact_match and token_f1), as the ROUGE package does.
"""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.evaluation.metrics.base import CaseContext, CaseScore, Metric, setting
from posttrain.evaluation.metrics.text import check_text_reference, references, tokens


@dataclass(frozen=True)
class RougeLConfig:
    beta: float = setting(1.0, "recall weight: F = (1+b^2)PR/(R+b^2 P); 1.0 weighs P and R equally")
    drop_articles: bool = setting(False, "ignore a/an/the")
    pass_threshold: float = setting(0.5, "a case passes when its ROUGE-L F is at least this")


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_f(prediction: list[str], reference: list[str], beta: float = 1.0) -> float:
    if not prediction or not reference:
        return float(prediction == reference)
    lcs = lcs_length(prediction, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(prediction), lcs / len(reference)
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)


def score(case, output: str, config: RougeLConfig, ctx: CaseContext) -> CaseScore:
    out = tokens(output, drop_articles=config.drop_articles)
    value = max(
        (
            rouge_l_f(out, tokens(ref, drop_articles=config.drop_articles), config.beta)
            for ref in references(case.reference)
        ),
        default=0.0,
    )
    return CaseScore(value, value >= config.pass_threshold)


METRIC = Metric(
    name="rouge_l",
    kind="case",
    config=RougeLConfig,
    help="ROUGE-L F-measure with the best reference (0..1)",
    outputs={"rouge_l": True},
    score=score,
    check_case=check_text_reference,
)
