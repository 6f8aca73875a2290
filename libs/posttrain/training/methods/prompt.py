"""Prompt tuning (PEFT): learned soft-prompt embeddings prepended to the input. Cannot
be merged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from posttrain.training.methods.base import (
    MethodSpec,
    Runtime,
    help_field,
    load_causal_lm,
    register_method,
    save_peft_adapter,
)


@dataclass
class PromptMethodConfig:
    num_virtual_tokens: int = help_field(20, "Soft-prompt length in tokens.")
    init_text: str | None = help_field(
        None,
        "Initialise the soft prompt from this text's token embeddings (usually converges "
        "faster); None initialises randomly.",
    )

    def validate(self) -> None:
        if self.num_virtual_tokens < 1:
            raise ValueError("num_virtual_tokens must be >= 1")


def load(base: Path, config: PromptMethodConfig, runtime: Runtime) -> torch.nn.Module:
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    model = load_causal_lm(base, runtime.frozen_dtype, runtime.device)
    if config.init_text:
        peft_config = PromptTuningConfig(
            num_virtual_tokens=config.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=config.init_text,
            tokenizer_name_or_path=str(base),
            task_type="CAUSAL_LM",
        )
    else:
        peft_config = PromptTuningConfig(
            num_virtual_tokens=config.num_virtual_tokens, task_type="CAUSAL_LM"
        )
    return get_peft_model(model, peft_config)


SPEC = register_method(
    MethodSpec(
        name="prompt",
        summary="Prompt tuning (PEFT): soft-prompt embeddings",
        config_class=PromptMethodConfig,
        artifact_kind="adapter",
        load=load,
        save=save_peft_adapter,
        merge=None,
        cannot_merge=(
            "prompt tuning prepends learned embeddings at inference time; there is no "
            "weight delta to fold into the base. Serve the adapter with PEFT instead."
        ),
        supports_packing=False,  # virtual tokens are prepended once per row, not per packed row
    )
)
