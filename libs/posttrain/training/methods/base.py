"""The tuning-method registry and what every method shares.

A method is one registered MethodSpec: a typed config dataclass (the documentation: a
help text per field) and plain functions that load the base model ready to train, save
the artifact, and merge it (or say why it cannot). Methods come from PEFT; nothing here
re-implements one. The engine only ever talks to a MethodSpec.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

ArtifactKind = Literal["adapter", "full"]


@dataclass(frozen=True)
class Runtime:
    """Where and how the model runs: fp32 on CPU; bf16 autocast (and bf16 frozen weights)
    on GPU."""

    device: torch.device
    compute_dtype: torch.dtype  # autocast dtype; float32 means no autocast

    @property
    def frozen_dtype(self) -> torch.dtype:
        """dtype for weights that are not trained (the base under an adapter)."""
        return self.compute_dtype

    @property
    def merge_dtype(self) -> torch.dtype:
        """16-bit on GPU, fp32 on CPU (CPU bf16 matmuls are slow and lossy)."""
        return torch.bfloat16 if self.device.type == "cuda" else torch.float32


@dataclass(frozen=True)
class MethodSpec:
    """One tuning method. `load` returns the model with exactly the trainable parameters
    requiring grad; `save` writes the artifact; `merge` writes a plain transformers folder
    from a saved artifact, or is None with `cannot_merge` saying why."""

    name: str
    summary: str
    config_class: type
    artifact_kind: ArtifactKind
    load: Callable[[Path, Any, Runtime], torch.nn.Module]
    save: Callable[[torch.nn.Module, Path], None]
    merge: Callable[[Path, Path, Path, Runtime], None] | None
    cannot_merge: str = ""
    supports_packing: bool = True
    supports_gradient_checkpointing: bool = True

    def parse_config(self, values: Mapping[str, Any] | None) -> Any:
        """The typed config from a plain dict; unknown keys are an error naming the valid ones."""
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(self.config_class)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown {self.name} option(s) {unknown}; valid: {sorted(names)}")
        config = self.config_class(**coerce_fields(self.config_class, values))
        check = getattr(config, "validate", None)
        if check is not None:
            check()
        return config

    def config_help(self) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(self.config_class)}


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHODS:
        raise ValueError(f"tuning method {spec.name!r} is registered twice")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown tuning method {name!r}; known: {sorted(METHODS)}") from None


# Helpers the PEFT-based methods share.


def load_causal_lm(base: Path, dtype: torch.dtype, device: torch.device, **kwargs: Any) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, local_files_only=True, **kwargs)
    return model if "device_map" in kwargs else model.to(device)


def save_peft_adapter(model: torch.nn.Module, dest: Path) -> None:
    """Standard PEFT layout: adapter_config.json + adapter_model.safetensors."""
    model.save_pretrained(dest, safe_serialization=True)  # type: ignore[operator]


def merge_peft_adapter(adapter: Path, base: Path, dest: Path, runtime: Runtime) -> None:
    """Load the ORIGINAL base in 16-bit (fp32 on CPU), apply the saved adapter, fold it
    into the weights and save a plain transformers folder (+ the tokenizer)."""
    from peft import PeftModel

    model = load_causal_lm(base, runtime.merge_dtype, runtime.device)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(dest, safe_serialization=True)
    copy_tokenizer_files(base, dest)


def copy_tokenizer_files(source: Path, dest: Path) -> None:
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "tokenizer.model",
    ):
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def coerce_fields(config_class: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Values for a config dataclass with scalars converted to the field's type: YAML
    reads `1e-4` as a string, and gRPC hyperparameters arrive as strings."""
    types = {f.name: str(f.type) for f in dataclasses.fields(config_class)}
    out = dict(values)
    for name, value in values.items():
        kind = types.get(name, "")
        if value is None or kind.startswith(("list", "dict")) and not isinstance(value, str):
            continue
        scalar = kind.split("|")[0].strip()
        try:
            if scalar == "bool" and isinstance(value, str) and value.lower() in _TRUE + _FALSE:
                out[name] = value.lower() in _TRUE
            elif scalar == "float" and isinstance(value, int | str) and not isinstance(value, bool):
                out[name] = float(value)
            elif scalar == "int" and isinstance(value, str):
                out[name] = int(value)
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not a {scalar}") from None
    return out


def help_field(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with its help text (the config is the documentation)."""
    if isinstance(default, list | dict):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs
        )
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)
