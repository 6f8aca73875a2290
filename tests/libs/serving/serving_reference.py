"""What serving must reproduce, one adapter alone, one prompt at a time, no padding:
vanilla PEFT greedy generate for LoRA (and plain transformers for the base), and for
prompt-learning adapters greedy decoding through PEFT's forward without a KV cache (what
training computes; PEFT 0.21's generate drops the prefix under transformers 5.24).
Shared by the serving tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch


@torch.inference_mode()
def peft_generate(
    base_dir: Path,
    adapter_dir: Path | None,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    eos_ids: Iterable[int],
    pad_id: int,
) -> list[int]:
    """Greedy token ids generated after prompt_ids by the base (+ adapter, via PeftModel)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    prompt = torch.tensor([list(prompt_ids)])
    output = model.eval().generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(eos_ids),
        pad_token_id=pad_id,
    )
    return output[0, prompt.shape[1] :].tolist()


@torch.inference_mode()
def peft_forward_greedy(
    base_dir: Path,
    adapter_dir: Path,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    eos_ids: Iterable[int],
) -> list[int]:
    """Greedy token ids from PeftModel's forward over the whole sequence at every step."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    sequence, generated, stop = list(prompt_ids), [], set(eos_ids)
    for _ in range(max_new_tokens):
        ids = torch.tensor([sequence])
        token = int(
            model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].argmax()
        )
        generated.append(token)
        sequence.append(token)
        if token in stop:
            break
    return generated
