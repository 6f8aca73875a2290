"""Random PEFT adapters for serving tests and benchmarks (like training's make_tiny_model).

A freshly initialised adapter is a no-op (LoRA's B is zero; prompt-learning starts near
the base), which would let a wrong serving path pass. These adapters are randomised so
that their outputs differ from the base, then saved with PEFT's own save_pretrained, so
what is served is exactly what training would write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def make_tiny_base(dest_dir: str | Path, seed: int = 0, *, weight_std: float = 0.2) -> Path:
    """Training's tiny random Llama (make_tiny_model: SmolLM2's tokenizer cut to 1024 ids)
    with its matrices redrawn at std `weight_std`. At the usual init (0.02) a 2-layer
    model with tied embeddings mostly repeats its last token, whatever the prompt or
    adapter: that would hide a wrong padding, position or adapter path."""
    from transformers import AutoModelForCausalLM

    from posttrain.training import make_tiny_model

    dest = Path(dest_dir)
    if (dest / "config.json").is_file():
        return dest
    make_tiny_model(dest, seed=seed)
    model = AutoModelForCausalLM.from_pretrained(dest, local_files_only=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * weight_std)
    model.save_pretrained(dest)
    return dest


def make_random_adapter(
    base_model_dir: str | Path,
    dest_dir: str | Path,
    *,
    kind: str = "lora",
    seed: int = 0,
    scale: float = 0.5,
    **config: Any,
) -> Path:
    """Save a random adapter for the base at dest_dir and return it.

    kind: "lora" (config: LoraConfig fields; default r=4 on q_proj/v_proj), "prefix"
    (PrefixTuningConfig; default 4 virtual tokens) or "prompt" (PromptTuningConfig;
    default 4). `scale` is the std of the random LoRA B / prompt-learning weights."""
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, local_files_only=True)
    if kind == "lora":
        options = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]} | config
        peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **options))
        randomised = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    elif kind in ("prefix", "prompt"):
        config_class = PrefixTuningConfig if kind == "prefix" else PromptTuningConfig
        options = {"num_virtual_tokens": 4} | config
        peft_model = get_peft_model(model, config_class(task_type="CAUSAL_LM", **options))
        randomised = list(peft_model.prompt_encoder.parameters())
    else:
        raise ValueError(f"unknown adapter kind {kind!r}: lora, prefix or prompt")
    with torch.no_grad():
        for param in randomised:
            param.normal_(0.0, scale)
    dest = Path(dest_dir)
    peft_model.save_pretrained(dest)
    return dest


def merge_lora_adapter(
    base_model_dir: str | Path, adapter_dir: str | Path, dest_dir: str | Path
) -> Path:
    """The base with the LoRA adapter folded in (PEFT merge_and_unload), saved with the
    base's tokenizer as a normal model folder: what a merged release serves."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_model_dir, local_files_only=True)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    dest = Path(dest_dir)
    merged.save_pretrained(dest)
    AutoTokenizer.from_pretrained(base_model_dir, local_files_only=True).save_pretrained(dest)
    return dest
