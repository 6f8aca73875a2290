"""cost: what the run's tokens cost at the configured prices (Prices: per 1K prompt and per
1K completion tokens), per 1K tokens and per successful task.

A successful task is a case that passed (every non-judge metric of the case passed).
cost_per_successful_task = total cost / successful cases; left out (not measured) when
no case succeeded. Deterministic: it depends on token counts only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from posttrain.evaluation.metrics.base import Metric, MetricSkipped, RunContext, setting


@dataclass(frozen=True)
class Prices:
    """Configured prices of a deployment, per 1K tokens (the currency is a label)."""

    prompt_per_1k: float = setting(0.0, "price of 1K prompt (input) tokens")
    completion_per_1k: float = setting(0.0, "price of 1K completion (output) tokens")
    currency: str = setting("USD", "what the prices are in; only a label")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.prompt_per_1k + completion_tokens * self.completion_per_1k
        ) / 1000

    def to_json(self) -> dict:
        return {
            "prompt_per_1k": self.prompt_per_1k,
            "completion_per_1k": self.completion_per_1k,
            "currency": self.currency,
        }


@dataclass(frozen=True)
class CostConfig:
    pass


def compute(cases: Sequence, ctx: RunContext, config: CostConfig) -> dict[str, float]:
    if ctx.prices is None:
        raise MetricSkipped("no prices configured")
    prompt = sum(c.prompt_tokens for c in cases)
    completion = sum(c.completion_tokens for c in cases)
    if prompt + completion == 0:
        raise MetricSkipped("no tokens")
    total = ctx.prices.cost(prompt, completion)
    out = {"cost_total": total, "cost_per_1k_tokens": total / ((prompt + completion) / 1000)}
    succeeded = sum(1 for c in cases if c.passed)
    if succeeded:
        out["cost_per_successful_task"] = total / succeeded
    return out


METRIC = Metric(
    name="cost",
    kind="run",
    config=CostConfig,
    help="cost of the run's tokens at configured prices: total, per 1K tokens, per successful task",
    outputs={"cost_total": False, "cost_per_1k_tokens": False, "cost_per_successful_task": False},
    compute=compute,
)
