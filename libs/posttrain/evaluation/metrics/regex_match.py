"""regex_match: the output has the shape a suite asks for (e.g. a house answer format)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from posttrain.evaluation.metrics.base import CaseContext, CaseScore, Metric, setting


@dataclass(frozen=True)
class RegexMatchConfig:
    pattern: str = setting("", "Python regular expression the whole stripped output must match")
    ignore_case: bool = setting(False, "match case-insensitively")

    def __post_init__(self) -> None:
        if not self.pattern:
            raise ValueError("regex_match needs a pattern (metric_config.regex_match.pattern)")
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"pattern does not compile: {exc}") from exc


def score(case, output: str, config: RegexMatchConfig, ctx: CaseContext) -> CaseScore:
    flags = re.DOTALL | (re.IGNORECASE if config.ignore_case else 0)
    hit = re.fullmatch(config.pattern, output.strip(), flags) is not None
    return CaseScore(1.0 if hit else 0.0, hit, "" if hit else "output does not match the pattern")


METRIC = Metric(
    name="regex_match",
    kind="case",
    config=RegexMatchConfig,
    help="1 when the stripped output fully matches the configured pattern",
    outputs={"regex_match": True},
    score=score,
)
