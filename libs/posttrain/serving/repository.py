"""Triton model repository entries for the LLM, adapter installs, and explicit model control.

Owns what tritonserver reads from disk: `<repository>/<model>/config.pbtxt` and
`<model>/<version>/model.py` (copied from triton_model/), for
  (a) the multi-adapter LLM model over a base folder and an adapter directory, and
  (b) a merged model as its own Triton model, one version folder per merged version
      (`<version>/model` links to, or holds, the merged weights);
installing adapters so they go live without a restart (an atomic symlink swap: a
reader sees the old adapter or the new one, never half of one); and loading, unloading
and waiting for models through tritonclient with explicit model control. Loading a new
version of a loaded model keeps the old one serving until the new one is ready.
It never starts or stops tritonserver (posttrain.stack does).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

MODEL_FILE = Path(__file__).parent / "triton_model" / "model.py"
# Hidden from lora_name lookups (names cannot start with a dot): versions behind the links.
ADAPTER_VERSIONS_DIR = ".versions"


@dataclass(frozen=True)
class LLMModelConfig:
    """One Triton LLM model: what config.pbtxt says. Every field is documented here."""

    base_model: Path  # HF causal-LM folder; relative = inside each version folder
    adapter_dir: Path | None = None  # folder of <lora_name>/ adapter folders; None = no adapters
    adapter_cache_size: int = 8  # adapters kept in memory (LRU)
    max_batch_size: int = 16  # rows per batched generation
    max_queue_delay_us: int = 2000  # dynamic batcher: wait this long to fill a batch
    default_max_tokens: int = 64  # when a request sends no max_tokens
    max_context_tokens: int | None = None  # prompt + output limit; None = the model's
    decoupled: bool = False  # True: streaming model (decoupled transaction policy)
    dtype: str = "auto"  # float32 | bfloat16 | float16 | auto (bf16 on GPU, fp32 on CPU)
    device: str = "auto"  # cpu | cuda | cuda:N | auto
    torch_threads: int = 0  # 0 = torch's default; 1 on a shared 2-core box (2 was ~10x slower)
    instance_count: int = 1  # model instances (each loads the base once)


_INPUTS = """\
input [
  { name: "text_input", data_type: TYPE_STRING, dims: [ 1 ] },
  { name: "lora_name", data_type: TYPE_STRING, dims: [ 1 ], optional: true },
  { name: "max_tokens", data_type: TYPE_INT32, dims: [ 1 ], optional: true },
  { name: "temperature", data_type: TYPE_FP32, dims: [ 1 ], optional: true },
  { name: "top_p", data_type: TYPE_FP32, dims: [ 1 ], optional: true },
  { name: "seed", data_type: TYPE_UINT64, dims: [ 1 ], optional: true },
  { name: "stop", data_type: TYPE_STRING, dims: [ -1 ], optional: true, allow_ragged_batch: true },
  { name: "stream", data_type: TYPE_BOOL, dims: [ 1 ], optional: true }
]
output [
  { name: "text_output", data_type: TYPE_STRING, dims: [ 1 ] },
  { name: "num_input_tokens", data_type: TYPE_UINT32, dims: [ 1 ] },
  { name: "num_output_tokens", data_type: TYPE_UINT32, dims: [ 1 ] },
  { name: "finish_reason", data_type: TYPE_STRING, dims: [ 1 ] }
]
"""


def render_config(name: str, config: LLMModelConfig) -> str:
    """config.pbtxt for one LLM model."""
    params = {
        "base_model": str(config.base_model),
        "adapter_dir": str(config.adapter_dir) if config.adapter_dir else "",
        "adapter_cache_size": str(config.adapter_cache_size),
        "default_max_tokens": str(config.default_max_tokens),
        "max_context_tokens": str(config.max_context_tokens or 0),
        "dtype": config.dtype,
        "device": config.device,
        "torch_threads": str(config.torch_threads),
    }
    parameters = "\n".join(
        f"parameters {{ key: {json.dumps(k)} value {{ string_value: {json.dumps(v)} }} }}"
        for k, v in params.items()
    )
    return (
        f"name: {json.dumps(name)}\n"
        'backend: "python"\n'
        f"max_batch_size: {config.max_batch_size}\n"
        f"dynamic_batching {{ max_queue_delay_microseconds: {config.max_queue_delay_us} }}\n"
        "model_transaction_policy { decoupled: "
        f"{'true' if config.decoupled else 'false'} }}\n"
        "version_policy: { latest: { num_versions: 1 } }\n"
        f"{_INPUTS}"
        f"instance_group [ {{ kind: KIND_CPU, count: {config.instance_count} }} ]\n"
        f"{parameters}\n"
    )


def served_parameter(repository: str | Path, name: str, key: str) -> str | None:
    """A parameter of the model's config.pbtxt as written (render_config), None if absent:
    e.g. the adapter_dir a loaded model looks in, which may be another writer's."""
    config = Path(repository) / name / "config.pbtxt"
    if not config.is_file():
        return None
    pattern = f"parameters {{ key: {json.dumps(key)} value {{ string_value: "
    for line in config.read_text().splitlines():
        if line.startswith(pattern):
            return json.loads(line[len(pattern) :].removesuffix(" } }"))
    return None


def _write_version(model_dir: Path, version: int) -> Path:
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MODEL_FILE, version_dir / "model.py")
    return version_dir


def _write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_llm_model(
    repository: str | Path, name: str, config: LLMModelConfig, *, version: int = 1
) -> Path:
    """The multi-adapter LLM model `name` (config.pbtxt + <version>/model.py); returns its
    folder. Load it with load_model. Adapters need no new version: they go live when
    their folder appears in config.adapter_dir."""
    model_dir = Path(repository) / name
    _write_version(model_dir, version)
    _write_text_atomically(model_dir / "config.pbtxt", render_config(name, config))
    return model_dir


def model_versions(repository: str | Path, name: str) -> list[int]:
    model_dir = Path(repository) / name
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def write_merged_model(
    repository: str | Path,
    name: str,
    merged_dir: str | Path,
    *,
    version: int | None = None,
    config: LLMModelConfig | None = None,
    copy: bool = False,
) -> int:
    """A merged-weight model as its own Triton model: a new version folder whose `model`
    links to merged_dir (or a copy, with copy=True). Returns the version written (next
    after the highest by default). Calling load_model afterwards switches traffic to it
    once loaded; the previous version serves until then."""
    model_dir = Path(repository) / name
    if version is None:
        version = max(model_versions(repository, name), default=0) + 1
    version_dir = _write_version(model_dir, version)
    target = version_dir / "model"
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    if copy:
        shutil.copytree(merged_dir, target)
    else:
        target.symlink_to(Path(merged_dir).resolve(), target_is_directory=True)
    base = config or LLMModelConfig(base_model=Path("model"))
    merged = replace(base, base_model=Path("model"), adapter_dir=None)
    _write_text_atomically(model_dir / "config.pbtxt", render_config(name, merged))
    return version


def prune_versions(repository: str | Path, name: str, keep: int = 1) -> list[int]:
    """Delete all but the newest `keep` version folders (after a load made them unused)."""
    versions = model_versions(repository, name)
    removed = versions[:-keep] if keep > 0 else versions
    for version in removed:
        shutil.rmtree(Path(repository) / name / str(version))
    return removed


# ---------------------------------------------------------------- adapters


def install_adapter(source: str | Path, adapter_dir: str | Path, name: str) -> Path:
    """Put the adapter folder `source` live as lora_name `name`, replacing any older one.

    The files are copied to `<adapter_dir>/.versions/<name>.<id>/`, then the link
    `<adapter_dir>/<name>` is swapped to it in one rename: requests see the old adapter
    or the new one, never a half-written folder. The version before last is deleted."""
    from posttrain.serving.adapters import check_adapter_name

    check_adapter_name(name)
    adapter_dir = Path(adapter_dir)
    versions = adapter_dir / ADAPTER_VERSIONS_DIR
    versions.mkdir(parents=True, exist_ok=True)
    target = versions / f"{name}.{uuid.uuid4().hex[:12]}"
    staging = versions / f".staging-{target.name}"
    shutil.copytree(source, staging)
    staging.rename(target)
    link = adapter_dir / name
    previous = link.resolve() if link.is_symlink() else None
    if link.exists() and not link.is_symlink():  # a plain folder put there by hand
        shutil.rmtree(link)
    tmp_link = adapter_dir / f".{name}.{uuid.uuid4().hex[:8]}.link"
    tmp_link.symlink_to(target.relative_to(adapter_dir), target_is_directory=True)
    os.replace(tmp_link, link)
    # Keep the previous version (a load may be reading it right now); drop older ones.
    for old in versions.glob(f"{name}.*"):
        if old not in (target, previous) and old.name.count(".") == name.count(".") + 1:
            shutil.rmtree(old, ignore_errors=True)
    return link


def remove_adapter(adapter_dir: str | Path, name: str) -> bool:
    """Take an adapter offline: later requests for it get NOT_FOUND."""
    link = Path(adapter_dir) / name
    if link.is_symlink():
        target = link.resolve()
        link.unlink()
        shutil.rmtree(target, ignore_errors=True)
        return True
    if link.is_dir():
        shutil.rmtree(link)
        return True
    return False


# ---------------------------------------------------------------- model control


def _client(client_or_url: Any) -> Any:
    if isinstance(client_or_url, str):
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(client_or_url)
    return client_or_url


def wait_until_ready(
    client_or_url: Any, name: str, *, version: str = "", timeout_s: float = 120.0
) -> None:
    """Block until the model (version) answers ready; TimeoutError after timeout_s."""
    client = _client(client_or_url)
    deadline = time.monotonic() + timeout_s
    while not client.is_model_ready(name, version):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Triton model {name!r} not ready after {timeout_s:.0f} s")
        time.sleep(0.1)


def load_model(client_or_url: Any, name: str, *, timeout_s: float = 300.0) -> None:
    """Load (or reload: new version folders, changed config) a model from the repository
    and wait until it is ready. Raises tritonclient's InferenceServerException when
    Triton refuses it (the message carries the model's own error)."""
    client = _client(client_or_url)
    client.load_model(name, client_timeout=timeout_s)
    wait_until_ready(client, name, timeout_s=timeout_s)


def ensure_llm_model(
    client_or_url: Any,
    repository: str | Path,
    name: str,
    config: LLMModelConfig,
    *,
    timeout_s: float = 300.0,
) -> bool:
    """Write and load the LLM model `name` unless Triton serves it already; True when it
    was loaded now. For names tied to their content (the base's sha256 in the name), so
    a served model of that name is this model."""
    client = _client(client_or_url)
    if (Path(repository) / name / "config.pbtxt").is_file() and client.is_model_ready(name):
        return False
    write_llm_model(repository, name, config)
    load_model(client, name, timeout_s=timeout_s)
    return True


def unload_model(
    client_or_url: Any, name: str, *, wait: bool = True, timeout_s: float = 120.0
) -> None:
    """Unload a model; in-flight requests finish first. With wait, block until it is gone."""
    client = _client(client_or_url)
    client.unload_model(name)
    deadline = time.monotonic() + timeout_s
    while wait and client.is_model_ready(name):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Triton model {name!r} still ready after {timeout_s:.0f} s")
        time.sleep(0.1)
