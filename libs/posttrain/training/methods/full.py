"""Full fine-tuning: every weight trains; the artifact is a complete transformers folder."""

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
)


@dataclass
class FullConfig:
    freeze_embeddings: bool = help_field(
        False,
        "Keep the input embeddings (and a tied LM head) frozen: saves optimizer memory "
        "on large vocabularies and protects rare tokens on small data sets.",
    )


def load(base: Path, config: FullConfig, runtime: Runtime) -> torch.nn.Module:
    # fp32 master weights everywhere; on GPU the forward runs under bf16 autocast.
    model = load_causal_lm(base, torch.float32, runtime.device)
    model.requires_grad_(True)
    if config.freeze_embeddings:
        model.get_input_embeddings().requires_grad_(False)
    return model


def save(model: torch.nn.Module, dest: Path) -> None:
    model.save_pretrained(dest, safe_serialization=True)  # type: ignore[operator]


SPEC = register_method(
    MethodSpec(
        name="full",
        summary="Full fine-tuning of every weight",
        config_class=FullConfig,
        artifact_kind="full",
        load=load,
        save=save,
        merge=None,
        cannot_merge="full fine-tuning already produces a complete model; nothing to merge",
    )
)
