"""LocalHFGenerator on a tiny random Llama: deterministic greedy output in a fixed batch
composition, prompts rendered by the chat template, token scoring for perplexity."""

from __future__ import annotations

import math

import pytest

from posttrain.data.chat_template import render_prompt
from posttrain.evaluation import LocalHFGenerator, Provenance, run_suite
from posttrain.evaluation.generation import batch_order

PROMPTS = [
    [{"role": "user", "content": "How do I reset my router?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "What does a blinking blue light mean on the X2 router?"}],
]


def test_batch_order_depends_only_on_lengths() -> None:
    assert batch_order([5, 3, 5, 1, 3], 2) == [[3, 1], [4, 0], [2]]
    assert batch_order([5, 3, 5, 1, 3], 10) == [[3, 1, 4, 0, 2]]
    assert batch_order([], 4) == []


def test_local_generator_is_deterministic_and_in_order(tiny_llama) -> None:
    model, tokenizer = tiny_llama
    generator = LocalHFGenerator(model, tokenizer, batch_size=2)
    first = generator.generate(PROMPTS, max_new_tokens=8, seed=0)
    second = generator.generate(PROMPTS, max_new_tokens=8, seed=0)
    assert [g.text for g in first] == [g.text for g in second]
    assert [g.completion_tokens for g in first] == [g.completion_tokens for g in second]
    # outputs come back in prompt order, each counted against its own rendered prompt
    assert [g.prompt_tokens for g in first] == [len(render_prompt(p, tokenizer)) for p in PROMPTS]
    assert all(0 < g.completion_tokens <= 8 and g.latency_s > 0 for g in first)
    assert all(isinstance(g.text, str) for g in first)


def test_token_scoring_and_a_real_run(tiny_llama, make_suite) -> None:
    model, tokenizer = tiny_llama
    generator = LocalHFGenerator(model, tokenizer, batch_size=4)
    rows = [{"messages": [*PROMPTS[0], {"role": "assistant", "content": "Hold reset."}]}]
    nll, count = generator.score_tokens(rows)
    # "Hold reset." plus the end-of-turn token are scored; a random model is near-uniform
    assert count >= 3 and math.isfinite(nll)
    assert 0.3 * math.log(len(tokenizer)) < nll / count < 3 * math.log(len(tokenizer))

    suite = make_suite(
        [
            {"id": "a", "prompt": PROMPTS[0][0]["content"], "reference": "Hold the reset button."},
            {
                "id": "b",
                "prompt": PROMPTS[2][0]["content"],
                "reference": "WPS pairing.",
                "max_new_tokens": 4,
            },
        ],
        metrics=["token_f1"],
        run_metrics=["latency", "perplexity"],
        max_new_tokens=6,
    )
    provenance = Provenance(model_version_id="tiny", code_version="test", generator="local-hf")
    runs = [run_suite(suite, generator, seed=0, provenance=provenance) for _ in range(2)]
    assert "perplexity" in runs[0].overall and runs[0].notes == ["no gate policy: no verdict"]
    measured = {"latency_p50_s", "latency_p95_s", "tokens_per_s"}
    for first, second in zip(runs[0].metrics.values(), runs[1].metrics.values(), strict=True):
        assert {k: v for k, v in first.items() if k not in measured} == pytest.approx(
            {k: v for k, v in second.items() if k not in measured}
        )
    assert [c.output for c in runs[0].cases] == [c.output for c in runs[1].cases]
    assert runs[0].cases[1].completion_tokens <= 4
