"""Issue 5 on a real model (slow): LoRA on SmolLM2-135M-Instruct learns a house answer
format the base never produces, and the tuned model stops (emits EOS) on its own.

Task: "Look up <item> (ref <4 digits>)" -> "ANSWER: <item> | REF-<digits>". Held-out rows
use item/code pairs never seen in training. Greedy generation via render_prompt (the
training template). One training run (module fixture) serves both tests. Measured on the
2-core dev machine: see the numbers printed with -s and in the training report.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import torch

from posttrain.training import (
    TrainingJobConfig,
    generate_reply,
    load_trained_model,
    run_training,
)

# The shared fixture exports SmolLM2 and trains it (~2-3 min on 2 quiet cores); the
# default 600 s timeout is too tight when the machine is busy.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ITEMS = (
    "maple cedar falcon otter harbor lantern meadow copper silver violet ember frost canyon "
    "willow pebble thistle walnut saffron cobalt juniper marble orchid quartz sparrow"
).split()
SYSTEM = "You are the Acme stock desk."
MAX_NEW_TOKENS = 24


def house_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        item, code = rng.choice(ITEMS), rng.randint(1000, 9999)
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Look up {item} (ref {code})."},
                    {"role": "assistant", "content": f"ANSWER: {item} | REF-{code}"},
                ]
            }
        )
    return rows


def _exact_match(model, tokenizer, rows) -> tuple[float, list]:
    replies = [
        generate_reply(model, tokenizer, row["messages"][:-1], max_new_tokens=MAX_NEW_TOKENS)
        for row in rows
    ]
    hits = [
        r.text.strip() == row["messages"][-1]["content"]
        for r, row in zip(replies, rows, strict=True)
    ]
    return sum(hits) / len(rows), replies


@pytest.fixture(scope="module")
def tuned(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.set_num_threads(2)
    train, held_out = house_rows(400, seed=1), house_rows(16, seed=2)
    train_pairs = {r["messages"][1]["content"] for r in train}
    held_out = [r for r in held_out if r["messages"][1]["content"] not in train_pairs]

    base_model, tokenizer = load_trained_model(smollm2)
    started = time.perf_counter()
    base_em, base_replies = _exact_match(base_model, tokenizer, held_out)
    base_eval_s = time.perf_counter() - started
    del base_model

    config = TrainingJobConfig(
        base_model=str(smollm2),
        method="lora",
        method_config={"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        max_steps=40,
        batch_size=8,
        lr=2e-3,
        warmup_steps=4,
        max_seq_len=128,
        seed=0,
    )
    started = time.perf_counter()
    result = run_training(config, train, held_out, tmp_path_factory.mktemp("smollm2-lora"))
    train_s = time.perf_counter() - started
    model, tokenizer = load_trained_model(result.artifact_dir, smollm2)
    started = time.perf_counter()
    tuned_em, replies = _exact_match(model, tokenizer, held_out)
    tuned_eval_s = time.perf_counter() - started
    summary = {
        "held_out": len(held_out),
        "base_exact_match": base_em,
        "tuned_exact_match": tuned_em,
        "train_s": round(train_s, 1),
        "tokens_per_s": round(result.tokens / result.wall_time_s, 1),
        "base_generation_s": round(base_eval_s, 1),
        "tuned_generation_s": round(tuned_eval_s, 1),
        "first_loss": round(result.history[0]["loss"], 3),
        "final_loss": round(result.history[-1]["loss"], 3),
        "eval_loss": round(result.metrics["final_eval_loss"], 4),
        "base_sample": base_replies[0].text[:80],
        "tuned_sample": replies[0].text,
    }
    print("\nSmolLM2 LoRA house-format:", summary)
    return {"summary": summary, "replies": replies, "result": result}


def test_export_is_a_plain_safetensors_folder(smollm2: Path) -> None:
    """The GGUF export: no quantizer left in the config, weights in safetensors, the chat
    template next to them; a second call reuses the folder."""
    import json

    from posttrain.training import export_smollm2_instruct

    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (smollm2 / "model.safetensors").stat().st_size > 500e6  # fp32, 134.5M params
    assert "<|im_start|>" in (smollm2 / "chat_template.jinja").read_text()
    started = time.perf_counter()
    assert export_smollm2_instruct(smollm2) == smollm2
    assert time.perf_counter() - started < 1.0


def test_lora_learns_the_house_format(tuned: dict) -> None:
    summary = tuned["summary"]
    assert summary["base_exact_match"] <= 0.1, summary
    assert summary["tuned_exact_match"] >= 0.8, summary


def test_tuned_model_stops_with_eos(tuned: dict) -> None:
    replies = tuned["replies"]
    assert all(r.stopped for r in replies), [r.text for r in replies if not r.stopped]
    assert all(len(r.token_ids) < MAX_NEW_TOKENS for r in replies)
