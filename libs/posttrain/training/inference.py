"""Greedy replies from a trained artifact, prompted exactly as in training.

For quick checks after training (exact match on held-out rows, "does it stop"); the
evaluator and serving have their own runtimes but use the same render_prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from posttrain.data.chat_template import end_of_turn_ids, render_prompt
from posttrain.training.models import load_tokenizer


@dataclass(frozen=True)
class Reply:
    text: str  # decoded without the end-of-turn token
    token_ids: list[int]  # generated ids, end-of-turn included when emitted
    stopped: bool  # ended with an end-of-turn token before max_new_tokens


def load_trained_model(
    artifact_dir: str | Path,
    base_model: str | Path | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[Any, Any]:
    """(model, tokenizer) from a full/merged folder, or an adapter folder on its base
    (base_model, else the adapter config's base_model_name_or_path), in eval mode."""
    from transformers import AutoModelForCausalLM

    artifact = Path(artifact_dir)
    if (artifact / "adapter_config.json").is_file():
        from peft import PeftConfig, PeftModel

        base = Path(base_model or PeftConfig.from_pretrained(artifact).base_model_name_or_path)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, local_files_only=True)
        model = PeftModel.from_pretrained(model, artifact)
        tokenizer_source = artifact if (artifact / "tokenizer_config.json").is_file() else base
    else:
        model = AutoModelForCausalLM.from_pretrained(artifact, dtype=dtype, local_files_only=True)
        tokenizer_source = artifact
    return model.to(device).eval(), load_tokenizer(tokenizer_source)


@torch.no_grad()
def generate_reply(
    model: Any,
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    max_new_tokens: int = 64,
    tools: Any = None,
) -> Reply:
    """Greedy decoding from render_prompt(messages); stops at an end-of-turn token."""
    stop = sorted(end_of_turn_ids(tokenizer))
    prompt = torch.tensor([render_prompt(messages, tokenizer, tools=tools)])
    device = next(model.parameters()).device
    output = model.generate(
        input_ids=prompt.to(device),
        attention_mask=torch.ones_like(prompt).to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop,
        pad_token_id=tokenizer.pad_token_id,
    )
    generated = output[0, prompt.shape[1] :].tolist()
    stopped = bool(generated) and generated[-1] in stop
    text_ids = generated[:-1] if stopped else generated
    return Reply(
        text=tokenizer.decode(text_ids, skip_special_tokens=True),
        token_ids=generated,
        stopped=stopped,
    )
