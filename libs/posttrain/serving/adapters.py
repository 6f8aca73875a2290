"""PEFT adapters read from an adapter directory, kept in an LRU cache over one base model.

Owns finding an adapter by name (`<adapter_dir>/<name>/adapter_config.json`), reading it
into a form the engine can serve, and deciding which adapters stay in memory. A LoRA
adapter becomes plain tensors per target Linear (A^T and scale * B^T), so many adapters
can be applied to one batch at once (see batched_lora). Prefix-, prompt- and P-tuning
adapters become a PeftModel over the shared base for the unbatched path. It must never
change the base model's weights or modules.

Hot add: a folder that appears under the adapter directory is found on its first use;
a folder whose files changed (a new version written under the same name) is read again.
Writers should put a complete folder in place with one rename (install_adapter in
repository.py does) so a half-written adapter is never read.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from posttrain.serving.errors import AdapterLoadError, AdapterNotFound, InvalidRequest

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
PROMPT_LEARNING_TYPES = ("PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING")
_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_KEY_PREFIX = "base_model.model."
# LoraConfig options that change the forward beyond y = Wx + s*B(A(x)).
_UNSUPPORTED_LORA_OPTIONS = (
    "use_dora",
    "fan_in_fan_out",
    "modules_to_save",
    "lora_bias",
    "layer_replication",
    "trainable_token_indices",
    "alora_invocation_tokens",
    "target_parameters",
    "use_qalora",
    "use_bdlora",
)


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter as tensors: per module name, A^T [in, r] and scale * B^T [r, out]."""

    name: str
    path: Path
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def max_rank(self) -> int:
        return max(a.shape[1] for a, _ in self.weights.values())


@dataclass(frozen=True)
class PromptLearningAdapter:
    """A prefix/prompt/P-tuning adapter: a PeftModel wrapping the shared base model."""

    name: str
    path: Path
    peft_type: str
    model: Any = field(repr=False)


Adapter = LoraAdapter | PromptLearningAdapter


def _fingerprint(folder: Path) -> tuple:
    """Changes when the adapter's files are replaced (rename, rewrite or touch)."""
    parts: list[Any] = [folder.stat().st_ino]
    for name in ("adapter_config.json", *_WEIGHT_FILES):
        path = folder / name
        if path.exists():
            st = path.stat()
            parts += [name, st.st_ino, st.st_size, st.st_mtime_ns]
    return tuple(parts)


def check_adapter_name(name: str) -> str:
    """The name as a folder name: letters, digits and ._@+- ; no path separators."""
    if not ADAPTER_NAME.match(name):
        raise InvalidRequest(
            f"invalid lora_name {name!r}: use 1-128 of A-Z a-z 0-9 . _ @ + - "
            "(not starting with . _ @ + -)"
        )
    return name


def _read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "adapter_model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "adapter_model.safetensors"))
    if (folder / "adapter_model.bin").is_file():
        return torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    raise AdapterLoadError(f"adapter folder {folder} has no adapter_model.safetensors")


def load_lora_adapter(
    name: str,
    folder: Path,
    config: dict[str, Any],
    modules: dict[str, torch.nn.Module],
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> LoraAdapter:
    """Read a PEFT LoRA folder into per-module (A^T, scale * B^T); `modules` are the base
    model's named modules. Refuses options whose forward is not a plain low-rank delta."""
    for option in _UNSUPPORTED_LORA_OPTIONS:
        if config.get(option):
            raise AdapterLoadError(
                f"adapter {name!r}: LoRA option {option}={config[option]!r} is not supported "
                "by the batched LoRA path; merge the adapter and serve it as its own model"
            )
    state = _read_state_dict(folder)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = re.match(r"^(.*)\.lora_([AB])\.weight$", key)
        if not match:
            raise AdapterLoadError(
                f"adapter {name!r}: weight {key!r} is not a LoRA A/B matrix (only plain "
                "LoRA on Linear layers is served batched)"
            )
        module_name = match.group(1).removeprefix(_KEY_PREFIX)
        pairs.setdefault(module_name, {})[match.group(2)] = tensor
    if not pairs:
        raise AdapterLoadError(f"adapter {name!r}: no LoRA weights in {folder}")

    from peft.utils.other import get_pattern_key

    alpha_pattern = config.get("alpha_pattern") or {}
    weights = {}
    for module_name, pair in pairs.items():
        module = modules.get(module_name)
        if not isinstance(module, torch.nn.Linear):
            raise AdapterLoadError(
                f"adapter {name!r}: target {module_name!r} is not a Linear layer of the base"
            )
        if set(pair) != {"A", "B"}:
            raise AdapterLoadError(f"adapter {name!r}: {module_name} lacks lora_A or lora_B")
        a, b = pair["A"], pair["B"]
        rank = a.shape[0]
        if a.shape != (rank, module.in_features) or b.shape != (module.out_features, rank):
            raise AdapterLoadError(
                f"adapter {name!r}: {module_name} shapes A{tuple(a.shape)} B{tuple(b.shape)} "
                f"do not fit Linear({module.in_features}, {module.out_features}); "
                "was it trained on another base?"
            )
        alpha = float(config.get("lora_alpha", 8))
        if alpha_pattern:
            key = get_pattern_key(list(alpha_pattern), module_name)
            alpha = float(alpha_pattern.get(key, alpha))
        scale = alpha / (rank**0.5 if config.get("use_rslora") else rank)
        weights[module_name] = (
            a.t().to(device=device, dtype=dtype).contiguous(),
            (b.t().float() * scale).to(device=device, dtype=dtype).contiguous(),
        )
    return LoraAdapter(name=name, path=folder, weights=weights)


def load_prompt_learning_adapter(
    name: str, folder: Path, peft_type: str, base_model: torch.nn.Module
) -> PromptLearningAdapter:
    """PEFT's own PeftModel over the shared base: prompt learning adds embeddings or
    key/value prefixes outside the base's modules, so the base is left unchanged."""
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(base_model, str(folder), is_trainable=False)
    except Exception as exc:  # noqa: BLE001 - any PEFT failure is this adapter's problem
        raise AdapterLoadError(f"adapter {name!r}: PEFT could not load {folder}: {exc}") from exc
    return PromptLearningAdapter(name=name, path=folder, peft_type=peft_type, model=model.eval())


@dataclass
class CacheStats:
    hits: int = 0
    loads: int = 0
    reloads: int = 0
    evictions: int = 0


class AdapterCache:
    """The adapters in memory, least recently used evicted first, at most `capacity`.

    An adapter in use by a running batch stays alive through the batch's own reference
    even if evicted meanwhile, so a batch with more distinct adapters than `capacity`
    still runs (the cache just holds fewer afterwards)."""

    def __init__(
        self,
        adapter_dir: str | Path | None,
        base_model: torch.nn.Module,
        *,
        capacity: int = 8,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"adapter cache capacity must be >= 1, got {capacity}")
        self.adapter_dir = Path(adapter_dir) if adapter_dir else None
        self.capacity = capacity
        self.stats = CacheStats()
        self._model = base_model
        first = next(base_model.parameters())
        self._dtype = dtype or first.dtype
        self._device = device or first.device
        self._modules = dict(base_model.named_modules())
        self._entries: OrderedDict[str, tuple[tuple, Adapter]] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        """Names in memory, least recently used first."""
        return list(self._entries)

    def get(self, name: str) -> Adapter:
        """The adapter called `name`, read from its folder on first use or after a change.

        Raises InvalidRequest (bad name), AdapterNotFound, AdapterLoadError."""
        check_adapter_name(name)
        if self.adapter_dir is None:
            raise AdapterNotFound(f"adapter {name!r} requested but this model serves no adapters")
        folder = self.adapter_dir / name
        try:
            if not (folder / "adapter_config.json").is_file():
                raise FileNotFoundError(folder / "adapter_config.json")
            fingerprint = _fingerprint(folder)
        except FileNotFoundError as exc:  # never there, removed, or removed mid-check
            self.evict(name)  # taken offline: do not keep serving it from memory
            raise AdapterNotFound(
                f"adapter {name!r} not found: no {folder / 'adapter_config.json'}"
            ) from exc
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and entry[0] == fingerprint:
                self._entries.move_to_end(name)
                self.stats.hits += 1
                return entry[1]
            adapter = self._load(name, folder)
            if entry is not None:
                self.stats.reloads += 1
            self.stats.loads += 1
            self._entries[name] = (fingerprint, adapter)
            self._entries.move_to_end(name)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
                self.stats.evictions += 1
            return adapter

    def evict(self, name: str) -> bool:
        with self._lock:
            return self._entries.pop(name, None) is not None

    def _load(self, name: str, folder: Path) -> Adapter:
        try:
            config = json.loads((folder / "adapter_config.json").read_text())
        except (OSError, ValueError) as exc:
            raise AdapterLoadError(
                f"adapter {name!r}: unreadable adapter_config.json: {exc}"
            ) from exc
        peft_type = str(config.get("peft_type", "")).upper()
        if peft_type == "LORA":
            try:
                return load_lora_adapter(
                    name, folder, config, self._modules, dtype=self._dtype, device=self._device
                )
            except (OSError, RuntimeError, ValueError) as exc:  # e.g. a truncated file
                raise AdapterLoadError(f"adapter {name!r}: cannot read {folder}: {exc}") from exc
        if peft_type in PROMPT_LEARNING_TYPES:
            return load_prompt_learning_adapter(name, folder, peft_type, self._model)
        raise AdapterLoadError(
            f"adapter {name!r}: PEFT type {peft_type or '(none)'} is not served; served "
            f"types are LORA, {', '.join(PROMPT_LEARNING_TYPES)}"
        )
