"""Perplexity of a prompt-tuned model: PEFT prepends its virtual tokens' logits, which
the token scorer must leave out (found by a comparison of LoRA vs prompt tuning)."""

from __future__ import annotations

import math

import torch

from posttrain.evaluation.metrics.perplexity import hf_token_scorer
from posttrain.training import make_tiny_model
from posttrain.training.inference import load_trained_model

ROWS = [
    {
        "messages": [
            {"role": "user", "content": "Reverse: red green blue"},
            {"role": "assistant", "content": "blue green red"},
        ]
    }
]


def test_a_prompt_tuned_model_scores_the_same_tokens_as_its_base(tmp_path):
    from peft import PromptTuningConfig, get_peft_model

    torch.set_num_threads(1)
    base_dir = make_tiny_model(tmp_path / "tiny", seed=0)
    model, tokenizer = load_trained_model(base_dir)
    base_nll, base_count = hf_token_scorer(model, tokenizer)(ROWS)
    prompted = get_peft_model(
        model, PromptTuningConfig(num_virtual_tokens=8, task_type="CAUSAL_LM")
    ).eval()
    nll, count = hf_token_scorer(prompted, tokenizer)(ROWS)
    assert count == base_count > 0
    assert math.isfinite(nll) and nll != base_nll  # the soft prompt changes the scores
