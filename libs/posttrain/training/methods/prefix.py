"""Prefix tuning (PEFT): learned key/value prefixes in every layer. Cannot be merged."""

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
class PrefixMethodConfig:
    num_virtual_tokens: int = help_field(
        20, "Prefix length: virtual key/value positions per layer."
    )
    prefix_projection: bool = help_field(
        False, "Reparameterise the prefix through a 2-layer MLP (more stable, more params)."
    )
    encoder_hidden_size: int | None = help_field(
        None, "Hidden size of that MLP; None uses the model's hidden size."
    )

    def validate(self) -> None:
        if self.num_virtual_tokens < 1:
            raise ValueError("num_virtual_tokens must be >= 1")


def load(base: Path, config: PrefixMethodConfig, runtime: Runtime) -> torch.nn.Module:
    from peft import PrefixTuningConfig, get_peft_model

    model = load_causal_lm(base, runtime.frozen_dtype, runtime.device)
    peft_config = PrefixTuningConfig(
        num_virtual_tokens=config.num_virtual_tokens,
        prefix_projection=config.prefix_projection,
        encoder_hidden_size=config.encoder_hidden_size or model.config.hidden_size,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


SPEC = register_method(
    MethodSpec(
        name="prefix",
        summary="Prefix tuning (PEFT): per-layer virtual key/value tokens",
        config_class=PrefixMethodConfig,
        artifact_kind="adapter",
        load=load,
        save=save_peft_adapter,
        merge=None,
        cannot_merge=(
            "prefix tuning adds virtual key/value tokens at inference time; there is no "
            "weight delta to fold into the base. Serve the adapter with PEFT instead."
        ),
        # PEFT feeds the prefix as a KV cache: packed-sequence masks and gradient
        # checkpointing (which drops the cache in transformers) do not apply.
        supports_packing=False,
        supports_gradient_checkpointing=False,
    )
)
