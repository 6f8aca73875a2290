"""perplexity: exp(mean NLL per token) of the references as the model's answers.

Held-out rows are the suite's cases with a text reference, as chat rows
`{"messages": prompt + [{"role": "assistant", "content": reference}]}`; only the
assistant tokens are scored, rendered by the base model's chat template exactly as in
training (posttrain.data.chat_template.encode_chat).

Interface: the runner gets a token scorer `score_tokens(rows) -> (total_nll, tokens)`
(summed negative log-likelihood in nats over the scored tokens, and their count).
`hf_token_scorer(model, tokenizer)` builds one for a local transformers model
(LocalHFGenerator.score_tokens is one); a remote generator that cannot score tokens
leaves perplexity unmeasured, which the report's notes say.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from posttrain.evaluation.metrics.base import Metric, MetricSkipped, RunContext, setting
from posttrain.evaluation.metrics.text import references

TokenScorer = Callable[[Sequence[Mapping[str, Any]]], tuple[float, int]]


@dataclass(frozen=True)
class PerplexityConfig:
    tags: tuple[str, ...] = setting((), "only cases with one of these tags (empty: every case)")


def heldout_rows(
    cases: Sequence, ctx: RunContext, config: PerplexityConfig
) -> list[dict[str, Any]]:
    rows = []
    for result in cases:
        case = ctx.cases[result.case_id]
        refs = references(case.reference)
        if not refs or (config.tags and not set(config.tags) & set(case.tags)):
            continue
        rows.append({"messages": [*case.messages, {"role": "assistant", "content": refs[0]}]})
    return rows


def compute(cases: Sequence, ctx: RunContext, config: PerplexityConfig) -> dict[str, float]:
    if ctx.score_tokens is None:
        raise MetricSkipped("the generator cannot score tokens (no score_tokens)")
    rows = heldout_rows(cases, ctx, config)
    if not rows:
        raise MetricSkipped("no case with a text reference")
    nll, count = ctx.score_tokens(rows)
    if count == 0:
        raise MetricSkipped("no token scored")
    return {"perplexity": math.exp(nll / count), "nll_per_token": nll / count}


def hf_token_scorer(model: Any, tokenizer: Any, *, max_seq_len: int = 4096) -> TokenScorer:
    """A TokenScorer for a local transformers causal LM: NLL of the assistant tokens of each
    row, one row per forward pass (no padding, so batch composition cannot change it).
    Rows longer than max_seq_len tokens are left out (encode_rows' "drop" policy)."""
    import torch

    from posttrain.data.chat_template import IGNORE_INDEX, encode_rows

    @torch.no_grad()
    def score_tokens(rows: Sequence[Mapping[str, Any]]) -> tuple[float, int]:
        encoded, _ = encode_rows(rows, tokenizer, max_seq_len=max_seq_len)
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for item in encoded:
            ids = torch.tensor([item.input_ids], device=device)
            labels = torch.tensor([item.labels], device=device)
            # A prompt/prefix-tuned PEFT model returns logits for its virtual tokens first:
            # keep those of the input positions only.
            logits = model(input_ids=ids).logits[:, -ids.shape[1] :][:, :-1].float()
            target = labels[:, 1:]
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                target.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            ).item()
            count += int((target != IGNORE_INDEX).sum())
        return total, count

    return score_tokens


METRIC = Metric(
    name="perplexity",
    kind="run",
    config=PerplexityConfig,
    help="perplexity of the reference answers under the model (needs a token scorer)",
    outputs={"perplexity": False, "nll_per_token": False},
    compute=compute,
    per_tag=False,
)
