"""IA3 (PEFT): learned per-channel scaling of keys, values and the MLP; mergeable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
class IA3MethodConfig:
    target_modules: list[str] | None = help_field(
        None,
        "Modules to rescale; None uses PEFT's default for the architecture "
        "(Llama: k_proj, v_proj, down_proj).",
    )
    feedforward_modules: list[str] | None = help_field(
        None,
        "Which of target_modules are feed-forward (scaled on the input, not the output); "
        "must be a subset. None uses PEFT's default (Llama: down_proj).",
    )


def load(base: Path, config: IA3MethodConfig, runtime: Runtime) -> torch.nn.Module:
    from peft import IA3Config, get_peft_model

    model = load_causal_lm(base, runtime.frozen_dtype, runtime.device)
    peft_config = IA3Config(
        target_modules=config.target_modules,
        feedforward_modules=config.feedforward_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


SPEC = register_method(
    MethodSpec(
        name="ia3",
        summary="IA3 rescaling vectors (PEFT)",
        config_class=IA3MethodConfig,
        artifact_kind="adapter",
        load=load,
        save=save_peft_adapter,
        merge=merge_peft_adapter,
    )
)
