"""TrainingJobConfig: everything that decides a training run, as plain data.

The same config + the same data + the same code version reproduce the run (same seed ->
same loss curve). It round-trips YAML exactly; the trainer service stores that YAML with
the job, and `key=value` overrides (`method_config.rank=8`) adjust it from a command line.
Every field carries its help text; `TrainingJobConfig.help()` lists them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import yaml

from posttrain.data.chat_template import TruncationPolicy
from posttrain.training.methods import get_method
from posttrain.training.methods.base import coerce_fields, help_field

# Fields a resumed run may change: how the run is observed or stored, not what it computes,
# and the base model's path (another worker may hold the same base elsewhere; its identity
# is the base model hash in the lineage).
OPERATIONAL_FIELDS = frozenset(
    {
        "base_model",
        "eval_every",
        "eval_batch_size",
        "eval_at_start",
        "checkpoint_every",
        "merge_adapter",
        # Same math up to rounding (tests/libs/training/test_kernels.py): a job checkpointed
        # on a GPU worker may resume on one where they resolve differently.
        "fused_kernels",
        "compile_layers",
    }
)


@dataclass
class TrainingJobConfig:
    base_model: str = help_field("", "Base model: a local Hugging Face safetensors folder.")
    method: str = help_field("lora", "Tuning method: a name in posttrain.training.METHODS.")
    method_config: dict[str, Any] = help_field(
        {}, "Options of the method's typed config (e.g. rank, alpha for lora)."
    )
    seed: int = help_field(0, "Seeds model init, adapter init, dropout and the data order.")
    epochs: int = help_field(1, "Passes over the training rows (ignored when max_steps is set).")
    max_steps: int | None = help_field(
        None, "Optimizer steps to run; cycles over the data as needed. None: use epochs."
    )
    batch_size: int = help_field(
        8,
        "Rows (or packed sequences) per micro-batch of each process; under torchrun with N "
        "processes a step trains on N x batch_size x grad_accum rows.",
    )
    grad_accum: int = help_field(
        1, "Micro-batches per optimizer step; the loss is averaged over all their tokens."
    )
    lr: float = help_field(2e-4, "Peak learning rate (AdamW).")
    weight_decay: float = help_field(
        0.0, "AdamW decoupled weight decay on matrices (not on biases, norms or vectors)."
    )
    adam_beta1: float = help_field(0.9, "AdamW beta1.")
    adam_beta2: float = help_field(0.999, "AdamW beta2.")
    adam_eps: float = help_field(1e-8, "AdamW epsilon.")
    warmup_steps: int = help_field(0, "Linear warmup steps (exclusive with warmup_ratio).")
    warmup_ratio: float = help_field(
        0.0, "Warmup as a fraction of total steps (exclusive with warmup_steps)."
    )
    min_lr_ratio: float = help_field(
        0.0, "Cosine decay floor as a fraction of lr (0 decays towards zero)."
    )
    max_grad_norm: float = help_field(1.0, "Clip the global gradient norm to this; 0 disables.")
    max_seq_len: int = help_field(1024, "Longest training sequence in tokens.")
    truncation: str = help_field(
        "drop",
        "Rows longer than max_seq_len: 'drop' them, or 'truncate_left' (keep the last "
        "max_seq_len tokens when the last assistant turn still fits whole). Both counted.",
    )
    packing: bool = help_field(
        False,
        "Pack several rows into each sequence of up to max_seq_len tokens (attention kept "
        "within each row through position ids). Not for prefix/prompt tuning.",
    )
    eval_every: int = help_field(
        0, "Evaluate loss on the eval rows every N steps (0: only at the end)."
    )
    eval_at_start: bool = help_field(False, "Also evaluate before the first step.")
    eval_batch_size: int | None = help_field(None, "Eval micro-batch size; None: batch_size.")
    checkpoint_every: int = help_field(
        0, "Save a resumable checkpoint every N steps (0: only at the end or on cancel)."
    )
    gradient_checkpointing: bool = help_field(
        False, "Recompute activations in the backward pass: less memory, ~30% slower."
    )
    dtype: str = help_field(
        "auto",
        "Compute dtype: 'auto' (bfloat16 autocast on GPU, float32 on CPU), 'float32' or "
        "'bfloat16'. Trained weights are always kept in float32.",
    )
    device: str = help_field("auto", "'auto' (cuda when available), 'cpu' or 'cuda[:N]'.")
    fused_kernels: str = help_field(
        "auto",
        "Fused Triton kernels (RMSNorm, SwiGLU, RoPE, LoRA linear; posttrain.training.kernels): "
        "'auto' (on for one CUDA process with triton installed), 'on' or 'off'.",
    )
    compile_layers: bool = help_field(
        False, "torch.compile each decoder layer (slow first steps; measure before use)."
    )
    merge_adapter: bool = help_field(
        False, "After training, also write a merged model (methods that can merge)."
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        spec = get_method(self.method)
        spec.parse_config(self.method_config)
        TruncationPolicy(self.truncation)
        positive = ("epochs", "batch_size", "grad_accum", "max_seq_len")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError("set warmup_steps or warmup_ratio, not both")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError("warmup_ratio must be in [0, 1)")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if self.fused_kernels not in ("auto", "on", "off"):
            raise ValueError(f"fused_kernels must be auto, on or off, got {self.fused_kernels!r}")
        if self.packing and not spec.supports_packing:
            raise ValueError(f"packing is not supported by {self.method}")
        if self.gradient_checkpointing and not spec.supports_gradient_checkpointing:
            raise ValueError(f"gradient checkpointing is not supported by {self.method}")

    def method_spec_config(self) -> Any:
        """The method's typed config."""
        return get_method(self.method).parse_config(self.method_config)

    # Plain data round trips.

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingJobConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown training config key(s) {unknown}; valid: {sorted(names)}")
        return cls(**coerce_fields(cls, values))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> TrainingJobConfig:
        values = yaml.safe_load(text) or {}
        if not isinstance(values, dict):
            raise ValueError("a training config YAML must be a mapping")
        return cls.from_dict(values)

    def with_overrides(self, overrides: list[str]) -> TrainingJobConfig:
        """A copy with `key=value` overrides applied; values parse as YAML scalars and
        `method_config.KEY=value` sets one method option."""
        values = self.to_dict()
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"override {item!r} is not key=value")
            value = yaml.safe_load(raw) if raw else ""
            target = values
            *parents, leaf = key.strip().split(".")
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = value
        return self.from_dict(values)

    def fingerprint_dict(self) -> dict[str, Any]:
        """The fields that decide what the run computes (a resume must match them)."""
        return {k: v for k, v in self.to_dict().items() if k not in OPERATIONAL_FIELDS}

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
