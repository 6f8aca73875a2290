"""LoRA (PEFT): low-rank adapters on the chosen linear layers; mergeable into the base."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from posttrain.training.methods.base import (
    MethodSpec,
    Runtime,
    help_field,
    load_causal_lm,
    merge_peft_adapter,
    register_method,
    save_peft_adapter,
)


@dataclass
class LoraMethodConfig:
    rank: int = help_field(16, "LoRA rank r: the inner dimension of the A/B adapter matrices.")
    alpha: float = help_field(32.0, "LoRA alpha; the update is scaled by alpha / rank.")
    dropout: float = help_field(0.05, "Dropout on the adapter input during training.")
    target_modules: list[str] | str = help_field(
        "all-linear",
        "Module names to adapt (e.g. [q_proj, v_proj]) or 'all-linear' for every linear "
        "layer except the LM head.",
    )
    use_rslora: bool = help_field(False, "Rank-stabilised scaling alpha / sqrt(rank).")
    bias: str = help_field("none", "Train biases too: none | all | lora_only.")

    def validate(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(f"bias must be none, all or lora_only, got {self.bias!r}")

    def peft_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            use_rslora=self.use_rslora,
            bias=self.bias,
            task_type="CAUSAL_LM",
        )


def load(base: Path, config: LoraMethodConfig, runtime: Runtime) -> torch.nn.Module:
    from peft import get_peft_model

    model = load_causal_lm(base, runtime.frozen_dtype, runtime.device)
    return get_peft_model(model, config.peft_config())  # adapter weights stay fp32


SPEC = register_method(
    MethodSpec(
        name="lora",
        summary="LoRA adapters (PEFT) on a 16/32-bit base",
        config_class=LoraMethodConfig,
        artifact_kind="adapter",
        load=load,
        save=save_peft_adapter,
        merge=merge_peft_adapter,
    )
)
