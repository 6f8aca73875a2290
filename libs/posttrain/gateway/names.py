"""Names of the gateway: the use case a client names (with its stage), and the Triton
model and lora names a deployment is served under.

A client names a route as `<use case>` (the production stage) or `<use case>/<stage>`:
"support-bot" and "support-bot/production" are one route, "support-bot/staging" another.
"""

from __future__ import annotations

import re

from posttrain.rpc.errors import InvalidArgument

USE_CASE = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")
STAGES = ("staging", "production")
DEFAULT_STAGE = "production"
# An experiment variant with this model_version_id prefix serves the base model itself.
BASE_VARIANT_PREFIX = "base:"
STREAM_SUFFIX = "_stream"
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")
_UNSAFE_LORA = re.compile(r"[^A-Za-z0-9._@+-]+")


def parse_use_case(value: str, field: str = "use_case") -> tuple[str, str]:
    """(use case, stage) of "x" or "x/<stage>"; InvalidArgument naming `field` otherwise."""
    use_case, _, stage = value.partition("/")
    stage = stage or DEFAULT_STAGE
    if not value:
        raise InvalidArgument(field, "a use case is required, e.g. 'support-bot'")
    if not USE_CASE.fullmatch(use_case):
        raise InvalidArgument(
            field, f"{use_case!r} is not a valid use case (allowed: {USE_CASE.pattern})"
        )
    if stage not in STAGES:
        raise InvalidArgument(field, f"stage {stage!r} is not served; use one of {STAGES}")
    return use_case, stage


def route_name(use_case: str, stage: str) -> str:
    """How a client names the route: production is the plain use case."""
    return use_case if stage == DEFAULT_STAGE else f"{use_case}/{stage}"


def _slug(text: str, limit: int) -> str:
    return _UNSAFE.sub("-", text).strip("-.")[:limit] or "x"


def llm_model_name(base_model: str, sha256: str) -> str:
    """The multi-adapter Triton model of one base model (weights by manifest sha256)."""
    return f"llm_{_slug(base_model, 80)}_{sha256[:8]}"


def merged_model_name(model_version_id: str, sha256: str) -> str:
    """A merged or fully fine-tuned model version's own Triton model."""
    return f"merged_{_slug(model_version_id, 80)}_{sha256[:8]}"


def stream_model_name(triton_model: str) -> str:
    """The decoupled (streaming) twin of a Triton model."""
    return triton_model + STREAM_SUFFIX


def lora_name(model_version_id: str) -> str:
    """The adapter's folder name under the LLM model's adapter directory. Model names are
    global (one tenant owns a name), so a version id names one adapter of one tenant."""
    name = _UNSAFE_LORA.sub("-", model_version_id.replace(":", "@"))
    return name.lstrip("._@+-")[:128] or "adapter"


def base_variant_model(model_version_id: str) -> str | None:
    """The base model name of a "base:<name>" variant, else None."""
    if model_version_id.startswith(BASE_VARIANT_PREFIX):
        return model_version_id.removeprefix(BASE_VARIANT_PREFIX)
    return None
