"""Serving: many adapters on one shared base model, behind Triton's Python backend.

Pure library, like the rest of libs/: engine (GenerationEngine: batched multi-adapter
generation, independent of Triton), adapters (AdapterCache: PEFT adapters from an
adapter directory, LRU), batched_lora (per-row LoRA deltas in one forward), repository
(Triton model repository entries, adapter installs, explicit model control), client
(TritonLLM: tritonclient calls to the served LLM models, errors as service statuses),
errors, and triton_model/model.py (the Python-backend model file that wraps the engine).
The deployment controller and the gateway build on these; this package never starts
tritonserver itself.

Names are imported on first use, so the control-plane parts (repository) do not pull in
torch and transformers.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "adapters": ["AdapterCache", "LoraAdapter", "PromptLearningAdapter", "check_adapter_name"],
    "engine": [
        "GenerationEngine",
        "GenerationRequest",
        "GenerationResult",
        "SamplingParams",
        "parse_text_input",
    ],
    "client": ["Completion", "Sampling", "TritonLLM", "map_triton_error"],
    "errors": ["AdapterLoadError", "AdapterNotFound", "InvalidRequest", "ServingError"],
    "repository": [
        "LLMModelConfig",
        "ensure_llm_model",
        "install_adapter",
        "load_model",
        "model_versions",
        "prune_versions",
        "remove_adapter",
        "render_config",
        "unload_model",
        "wait_until_ready",
        "write_llm_model",
        "write_merged_model",
    ],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'posttrain.serving' has no attribute {name!r}")
    return getattr(import_module(f"posttrain.serving.{module}"), name)
