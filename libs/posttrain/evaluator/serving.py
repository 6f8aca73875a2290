"""Generating through Triton (EvaluatorConfig.generator = "triton"): the evaluator makes
the model under test servable itself, with posttrain.serving's repository functions, and
generates with a TritonGenerator over it.

Each model under test is one multi-adapter LLM model over a folder, plus a lora for an
adapter:
  base model, adapter: the base's folder as `eval_<base sha256[:16]>`; the adapter is
    installed in that model's adapter directory as `eval-<adapter sha256[:16]>`;
  merged, full: its own folder as `eval_<sha256[:16]>`, no lora.
Names are tied to the content, so the next evaluation of the same base finds its model
loaded and the same adapter installed. These are the evaluator's own Triton models, never
the gateway's: the gateway's model of a base has another adapter directory, and writing
its config anew would take the gateway's adapters offline.

The serving probe (EvaluatorConfig.serving_probe_requests > 0) times the candidate served
each way it can be deployed, whichever generator ran the suite: `adapter` (the lora on its
base's model, as above) and `merged` (a LoRA folded into its base here, by PEFT, and served
as its own model `eval_merged_<adapter sha256[:16]>`; a merged or full artifact is this
mode only). One request at a time after one warm-up, greedy, the suite's first prompts:
the latency a client of that deployment waits, not throughput under load.

Triton must see the loader's cache (the downloaded folders) and
`<cache>/triton-adapters/` at the same paths as this process, like the model repository
(a shared volume, as for the gateway). Models stay loaded after an evaluation (the next
candidate on the same base reuses it); unloading them is an operator's call.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tritonclient.utils import InferenceServerException

from posttrain.evaluation import ServingLatency, TritonGenerator
from posttrain.evaluation.generation import Messages
from posttrain.evaluator.models import ModelFolders, ModelUnloadable
from posttrain.rpc.errors import Unavailable
from posttrain.serving.client import map_triton_error
from posttrain.serving.repository import (
    LLMModelConfig,
    ensure_llm_model,
    install_adapter,
    served_parameter,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TritonOptions:
    """Where Triton is and how the evaluator's models are written there."""

    url: str = "127.0.0.1:18001"  # Triton's gRPC host:port
    model_repository: str = ""  # Triton's --model-repository, at the path Triton sees too
    concurrency: int = 4  # requests in flight per evaluation (Triton batches them)
    timeout_s: float = 600.0  # one generation request
    load_timeout_s: float = 600.0  # one model load
    max_batch_size: int = 16
    torch_threads: int = 0  # per Triton model; 0 = torch's default
    device: str = "auto"  # cpu | cuda | cuda:N | auto
    dtype: str = "auto"  # float32 | bfloat16 | float16 | auto


@dataclass(frozen=True)
class ServedModel:
    triton_model: str
    lora_name: str  # "" = the folder itself


class TritonServing:
    def __init__(self, options: TritonOptions, cache_dir: str | Path) -> None:
        if not options.model_repository:
            raise ValueError("generator 'triton' needs the Triton model repository's path")
        self.options = options
        self.adapters_root = Path(cache_dir).resolve() / "triton-adapters"

    def serve(self, folders: ModelFolders) -> ServedModel:
        """Make the model servable (load its folder's model, install its adapter).
        Unavailable when Triton does not answer (a retry may work); ModelUnloadable when
        Triton refuses the model."""
        served_dir = folders.base_dir or folders.artifact_dir
        served_sha = (folders.base_weights or folders.artifact).sha256
        model = f"eval_{served_sha[:16]}"
        self._load(model, served_dir)
        if folders.base_weights is None:
            return ServedModel(model, "")
        lora = f"eval-{folders.artifact.sha256[:16]}"
        # Where the loaded model looks: another evaluator's cache if it loaded it first.
        written = served_parameter(self.options.model_repository, model, "adapter_dir")
        adapter_dir = Path(written) if written else self.adapters_root / model
        if not (adapter_dir / lora).exists():  # the name is its content: installed is installed
            install_adapter(folders.artifact_dir, adapter_dir, lora)
        return ServedModel(model, lora)

    def serve_merged(self, folders: ModelFolders) -> ServedModel | None:
        """The candidate as one merged model: a merged/full artifact as it is, a LoRA folded
        into its base (once per adapter, kept in the cache); None when it can't be merged
        (prompt and prefix tuning add virtual tokens, not weights)."""
        if folders.base_weights is None or folders.base_dir is None:
            return self.serve(folders)
        config = json.loads((folders.artifact_dir / "adapter_config.json").read_text())
        if str(config.get("peft_type", "")).upper() != "LORA":
            return None
        from posttrain.serving.synthetic import merge_lora_adapter

        key = folders.artifact.sha256[:16]
        merged_dir = self.adapters_root.parent / "merged" / key
        if not (merged_dir / "config.json").is_file():
            staging = merged_dir.with_name(f"{key}.partial")
            shutil.rmtree(staging, ignore_errors=True)
            merge_lora_adapter(folders.base_dir, folders.artifact_dir, staging)
            staging.rename(merged_dir)  # whole or not at all: the next run reuses it
        model = f"eval_merged_{key}"
        self._load(model, merged_dir)
        return ServedModel(model, "")

    def _load(self, model: str, served_dir: Path) -> None:
        adapter_dir = self.adapters_root / model
        adapter_dir.mkdir(parents=True, exist_ok=True)
        o = self.options
        config = LLMModelConfig(
            base_model=served_dir.resolve(),
            adapter_dir=adapter_dir,
            max_batch_size=o.max_batch_size,
            dtype=o.dtype,
            device=o.device,
            torch_threads=o.torch_threads,
        )
        try:
            if ensure_llm_model(
                o.url, o.model_repository, model, config, timeout_s=o.load_timeout_s
            ):
                log.info("loaded Triton model %s over %s", model, served_dir)
        except InferenceServerException as exc:
            error = map_triton_error(exc, o.url, model, "")
            if isinstance(error, Unavailable) and "unreachable" in str(error):
                raise error from exc
            raise ModelUnloadable(f"Triton could not load it: {exc.message() or exc}") from exc
        except TimeoutError as exc:
            raise ModelUnloadable(f"Triton did not load it: {exc}") from exc

    def generator(self, served: ServedModel, concurrency: int | None = None) -> TritonGenerator:
        o = self.options
        return TritonGenerator(
            o.url,
            served.triton_model,
            served.lora_name,
            concurrency=concurrency or o.concurrency,
            timeout_s=o.timeout_s,
        )

    def probe(
        self,
        served: ServedModel,
        mode: str,
        prompts: Sequence[Messages],
        max_new_tokens: int,
        seed: int,
    ) -> ServingLatency:
        """Time `prompts` one at a time (after one warm-up request) on the served model."""
        generator = self.generator(served, concurrency=1)
        generator.generate(prompts[:1], max_new_tokens, seed)  # first-request costs aside
        timed = [generator.generate([p], max_new_tokens, seed)[0] for p in prompts]
        latencies = sorted(g.latency_s for g in timed)
        spent = sum(latencies)
        name = served.triton_model + (f"/{served.lora_name}" if served.lora_name else "")
        return ServingLatency(
            mode=mode,
            triton_model=name,
            requests=len(timed),
            latency_p50_s=statistics.median(latencies),
            latency_p95_s=_percentile(latencies, 0.95),
            completion_tokens_per_s=sum(g.completion_tokens for g in timed) / spent
            if spent > 0
            else 0.0,
        )


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, -(-len(ordered) * q // 1))  # ceil(n q), at least the first
    return ordered[int(rank) - 1]
