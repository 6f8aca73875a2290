"""Generators: what produces the outputs a suite scores.

`Generator` is the one interface: prompts (chat messages) in, one `Generation` per prompt
out, in the same order. LocalHFGenerator runs a transformers model in-process;
TritonGenerator asks a model served by Triton (posttrain.serving's LLM model, through
posttrain.serving.client); ReplayGenerator gives back outputs recorded in an earlier
report (re-scoring, re-judging) without a model.

Reproducibility of LocalHFGenerator: greedy decoding, and a fixed batch composition:
prompts are ordered by (token length, position) and cut into batches of `batch_size`,
so the same prompts always meet the same neighbours and the same left padding whatever
else runs. The seed is set before each batch (greedy decoding does not sample, but
a model with dropout left on, or a future sampling option, would).

Reproducibility of TritonGenerator: greedy decoding per request (temperature 0, the seed
sent along), the chat rendered by the served model with the training chat template,
exactly as LocalHFGenerator renders it. Triton's dynamic batcher decides which requests
share an execute(), so the batch composition is not fixed; the serving engine left-pads
each batch with an attention mask and the positions Hugging Face uses, so a row's output
does not depend on its neighbours in exact arithmetic (tests/libs/serving checks mixed
batches against single requests). In floating point a row's logits can move in the last
bits with the batch width, so a near-tie between two tokens may decode differently
(rare in fp32 on CPU; likelier in bf16 on a GPU): for byte-identical reports, generate
with LocalHFGenerator, or with concurrency=1 on a Triton model no one else calls.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from posttrain.data.canonical import canonical_json

Messages = list[dict[str, Any]]


@dataclass(frozen=True)
class Generation:
    """One output. latency_s is how long the request waited for it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


@runtime_checkable
class Generator(Protocol):
    def generate(
        self, prompts: Sequence[Messages], max_new_tokens: int, seed: int
    ) -> list[Generation]:
        """One Generation per prompt, in order; deterministic for a given seed."""
        ...


def prompt_key(messages: Sequence[Mapping[str, Any]]) -> str:
    """A stable key of a prompt: sha256 of its canonical JSON."""
    return hashlib.sha256(canonical_json(list(messages))).hexdigest()


class ReplayGenerator:
    """Replays recorded outputs by prompt (prompt_key); an unknown prompt is a KeyError.

    The recorded latency is replayed too, so a re-scored report keeps its latency numbers."""

    def __init__(self, outputs: Mapping[str, Generation]) -> None:
        self.outputs = dict(outputs)

    @classmethod
    def from_cases(cls, cases: Sequence[Any]) -> ReplayGenerator:
        """From the CaseResults of an EvaluationResult."""
        return cls(
            {
                prompt_key(c.messages): Generation(
                    c.output, c.prompt_tokens, c.completion_tokens, c.latency_s
                )
                for c in cases
            }
        )

    def generate(
        self, prompts: Sequence[Messages], max_new_tokens: int, seed: int
    ) -> list[Generation]:
        return [self.outputs[prompt_key(p)] for p in prompts]


def batch_order(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Prompt indices grouped into batches: by (length, index), then cut every batch_size.
    Depends only on the lengths, so a suite always gets the same batches."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class LocalHFGenerator:
    """Greedy generation with an in-process transformers causal LM.

    Prompts are rendered with the tokenizer's own chat template and the assistant
    generation prompt (apply_chat_template(add_generation_prompt=True), through
    posttrain.data.chat_template.render_prompt, so the model sees the tokens it was
    trained on). Generation stops at the tokenizer's end-of-turn tokens; the text is
    decoded without them. Batches are left-padded."""

    def __init__(
        self, model: Any, tokenizer: Any, *, batch_size: int = 8, max_seq_len: int = 4096
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len

    def score_tokens(self, rows: Sequence[Mapping[str, Any]]) -> tuple[float, int]:
        """The perplexity metric's TokenScorer for this model (metrics/perplexity.py)."""
        from posttrain.evaluation.metrics.perplexity import hf_token_scorer

        return hf_token_scorer(self.model, self.tokenizer, max_seq_len=self.max_seq_len)(rows)

    def generate(
        self, prompts: Sequence[Messages], max_new_tokens: int, seed: int
    ) -> list[Generation]:
        import torch

        from posttrain.data.chat_template import end_of_turn_ids, render_prompt

        stop = sorted(end_of_turn_ids(self.tokenizer))
        pad = self.tokenizer.pad_token_id
        pad = stop[0] if pad is None else pad
        encoded = [render_prompt(p, self.tokenizer) for p in prompts]
        device = next(self.model.parameters()).device
        results: list[Generation | None] = [None] * len(prompts)
        for batch in batch_order([len(e) for e in encoded], self.batch_size):
            width = max(len(encoded[i]) for i in batch)
            ids = [[pad] * (width - len(encoded[i])) + encoded[i] for i in batch]
            mask = [[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch]
            torch.manual_seed(seed)
            started = time.perf_counter()
            with torch.no_grad():
                output = self.model.generate(
                    input_ids=torch.tensor(ids, device=device),
                    attention_mask=torch.tensor(mask, device=device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=stop,
                    pad_token_id=pad,
                )
            latency = time.perf_counter() - started
            for row, index in enumerate(batch):
                generated = output[row, width:].tolist()
                end = next((j for j, t in enumerate(generated) if t in stop), None)
                kept = generated if end is None else generated[:end]
                results[index] = Generation(
                    text=self.tokenizer.decode(kept, skip_special_tokens=True),
                    prompt_tokens=len(encoded[index]),
                    completion_tokens=len(kept) + (0 if end is None else 1),
                    latency_s=latency,
                )
        return [r for r in results if r is not None]


class TritonGenerator:
    """Greedy generation by posttrain.serving's LLM model in Triton: `triton_model` at `url`
    (gRPC host:port), with the adapter `lora_name` ("" = the base).

    Each prompt is one request, text_input `{"messages": [...]}`: the served model renders
    it with the training chat template and the generation prompt. Up to `concurrency`
    requests are in flight at once (Triton batches them); the outputs come back in prompt
    order. latency_s is each request's own round trip. Triton's errors raise as
    posttrain.serving.client maps them (Unavailable, DeadlineExceeded, InvalidArgument...)."""

    def __init__(
        self,
        url: str,
        triton_model: str,
        lora_name: str = "",
        *,
        concurrency: int = 4,
        timeout_s: float = 600.0,
    ) -> None:
        from posttrain.serving.client import TritonLLM

        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.url = url
        self.triton_model = triton_model
        self.lora_name = lora_name
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.client = TritonLLM(url)

    def generate(
        self, prompts: Sequence[Messages], max_new_tokens: int, seed: int
    ) -> list[Generation]:
        from concurrent.futures import ThreadPoolExecutor

        from posttrain.serving.client import Sampling

        sampling = Sampling(max_tokens=max_new_tokens, temperature=0.0, seed=seed)

        def one(messages: Messages) -> Generation:
            text = json.dumps({"messages": list(messages)}, ensure_ascii=False)
            started = time.perf_counter()
            completion = self.client.generate(
                self.triton_model, text, self.lora_name, sampling, timeout_s=self.timeout_s
            )
            return Generation(
                text=completion.text,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                latency_s=time.perf_counter() - started,
            )

        if self.concurrency == 1 or len(prompts) <= 1:
            return [one(p) for p in prompts]
        with ThreadPoolExecutor(min(self.concurrency, len(prompts))) as pool:
            return list(pool.map(one, prompts))

    def close(self) -> None:
        self.client.close()
