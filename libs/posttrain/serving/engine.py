"""Generation for many adapters on one shared base model, independent of Triton.

Owns turning requests (a prompt, an adapter name, sampling settings) into text:
- the prompt rule (parse_text_input): a `text_input` that is a JSON object with a
  "messages" list is a chat, rendered with the training chat template
  (posttrain.data.chat_template.render_prompt, generation prompt added); anything else
  is raw text, tokenized as is;
- LoRA rows of one batch decode together: one forward per step for the whole batch, each
  row with its own adapter's delta (batched_lora), a KV cache, left padding, attention
  mask and position ids; finished rows leave the batch;
- greedy or sampled decoding per row (temperature, top_p, seed), stop strings, EOS and
  the chat template's end-of-turn tokens, max_tokens, token counts, and text deltas for
  streaming that never show a stop string or half a UTF-8 character;
- prefix-, prompt- and P-tuning adapters: one request at a time, with the virtual tokens
  placed as PEFT's forward (training) places them. Not through PEFT's generate: with
  peft 0.21 and transformers 5.24 it drops a prefix-tuning prefix (it passes
  past_key_values, which loses to the new `cache` argument) and prompt tuning drifts
  from the forward after the first token.
One request's error (unknown adapter, bad setting) is its own result; the others run.
It knows nothing of Triton (triton_model/model.py wraps it) and never changes the base.
"""

from __future__ import annotations

import inspect
import json
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from posttrain.data.chat_template import ChatTemplateError, end_of_turn_ids, render_prompt
from posttrain.serving.adapters import (
    AdapterCache,
    LoraAdapter,
    PromptLearningAdapter,
)
from posttrain.serving.batched_lora import BatchedLora
from posttrain.serving.errors import InvalidRequest, ServingError

Prompt = str | Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class SamplingParams:
    """How one row decodes. temperature 0 is greedy (the default)."""

    max_tokens: int | None = None  # None: the engine's default_max_tokens
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None  # sampled rows: same seed, same prompt, same adapter -> same text
    stop: tuple[str, ...] = ()  # generation ends before the first occurrence of any

    def check(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidRequest(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not self.temperature >= 0.0:
            raise InvalidRequest(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequest(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise InvalidRequest("stop strings must not be empty")


@dataclass(frozen=True)
class GenerationRequest:
    prompt: Prompt  # raw text, or chat messages
    adapter: str = ""  # adapter name under the adapter directory; "" = the base model
    params: SamplingParams = SamplingParams()
    tools: Any = None  # chat prompts only: passed to the chat template
    is_cancelled: Callable[[], bool] | None = None  # polled every 8 tokens (a Triton IPC)


@dataclass(frozen=True)
class GenerationResult:
    text: str  # without the EOS and without the stop string that ended it
    token_ids: list[int]  # generated ids, EOS included when one ended the row
    num_input_tokens: int
    num_output_tokens: int
    finish_reason: str  # "stop" (EOS or stop string), "length", "cancelled"; "" = running


Outcome = GenerationResult | ServingError
# on_update(row, text_delta, progress, final): progress is the row so far (its
# finish_reason is "" until the final call); called when there is new text, and once
# with final=True as the row ends.
UpdateCallback = Callable[[int, str, GenerationResult, bool], None]


def parse_text_input(text: str) -> tuple[Prompt, Any]:
    """(prompt, tools) from a `text_input`: a JSON object with a "messages" list is a
    chat (its optional "tools" go to the template); anything else is raw text."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except ValueError:
            return text, None
        if isinstance(value, dict) and isinstance(value.get("messages"), list):
            messages = value["messages"]
            if not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
            ):
                raise InvalidRequest('"messages" must be a non-empty list of {"role", "content"}')
            return messages, value.get("tools")
    return text, None


class _RowState:
    """One row's generated tokens and text: EOS, stop strings, max_tokens, stream deltas."""

    def __init__(
        self,
        engine: GenerationEngine,
        prompt_len: int,
        params: SamplingParams,
        max_tokens: int,
        cancelled: Callable[[], bool] | None,
    ) -> None:
        self.engine = engine
        self.prompt_len = prompt_len
        self.params = params
        self.max_tokens = max_tokens
        self.cancelled = cancelled
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0  # characters of text already given out as deltas
        self.finish_reason: str | None = None
        self.generator: torch.Generator | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def push(self, token: int) -> None:
        self.tokens.append(token)
        if token in self.engine.eos_ids:
            self.finish_reason = "stop"
            return
        self.text = self.engine.decode(self.tokens)
        cut = min((i for i in (self.text.find(s) for s in self.params.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            self.finish_reason = "stop"
        elif len(self.tokens) >= self.max_tokens:
            self.finish_reason = "length"
        elif self.cancelled is not None and len(self.tokens) % 8 == 0 and self.cancelled():
            self.finish_reason = "cancelled"

    def take_delta(self) -> str:
        """Text not given out yet; until the row ends, hold back a trailing partial UTF-8
        character and any tail that could be the start of a stop string."""
        end = len(self.text)
        if not self.done:
            while end > self.sent and self.text[end - 1] == "\ufffd":
                end -= 1
            for stop in self.params.stop:
                for k in range(min(len(stop) - 1, end - self.sent), 0, -1):
                    if self.text[end - k : end] == stop[:k]:
                        end -= k
                        break
        delta = self.text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return delta

    def result(self) -> GenerationResult:
        return GenerationResult(
            text=self.text,  # an EOS ends the row before it is decoded into the text
            token_ids=list(self.tokens),
            num_input_tokens=self.prompt_len,
            num_output_tokens=len(self.tokens),
            finish_reason=self.finish_reason or "",
        )


@dataclass
class _Row:
    index: int
    prompt_ids: list[int]
    adapter: LoraAdapter | PromptLearningAdapter | None
    state: _RowState
    finished_reported: bool = field(default=False)


class GenerationEngine:
    """One base model, its tokenizer, and an AdapterCache over `adapter_dir`.

    `generate` is thread safe (one batch at a time)."""

    def __init__(
        self,
        base_model_dir: str | Path,
        adapter_dir: str | Path | None = None,
        *,
        adapter_cache_size: int = 8,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device = "auto",
        default_max_tokens: int = 64,
        max_context_tokens: int | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if dtype == "auto":
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        elif isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.base_model_dir = Path(base_model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(
            self.base_model_dir, dtype=dtype, local_files_only=True
        ).to(self.device)
        self.model.eval()
        self.model.requires_grad_(False)
        # transformers 5.24 renamed the forward's past_key_values to cache (older: the former).
        forward_args = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        self.tokenizer = AutoTokenizer.from_pretrained(self.base_model_dir, local_files_only=True)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.eos_ids = frozenset(self._eos_ids())
        self.default_max_tokens = default_max_tokens
        limit = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.max_context_tokens = min(max_context_tokens or limit, limit)
        self.adapters = AdapterCache(adapter_dir, self.model, capacity=adapter_cache_size)
        self._lock = threading.Lock()

    def _eos_ids(self) -> set[int]:
        ids = set(end_of_turn_ids(self.tokenizer))
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(int(i) for i in configured)
        return ids

    # ------------------------------------------------------------------ text

    def encode_prompt(self, prompt: Prompt, tools: Any = None) -> list[int]:
        """Prompt token ids: chat messages through the training chat template, raw text
        through the tokenizer (with its usual special tokens)."""
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt)["input_ids"])
        try:
            return render_prompt(prompt, self.tokenizer, tools=tools)
        except (ChatTemplateError, KeyError, TypeError, ValueError) as exc:
            raise InvalidRequest(f"chat prompt cannot be rendered: {exc}") from exc

    def decode(self, token_ids: Sequence[int]) -> str:
        # No clean-up of spaces: decoding a longer prefix only ever appends text.
        return self.tokenizer.decode(
            token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    # ------------------------------------------------------------------ generate

    @torch.inference_mode()
    def generate(
        self, requests: Sequence[GenerationRequest], on_update: UpdateCallback | None = None
    ) -> list[Outcome]:
        """One outcome per request, in order. LoRA and base rows run as one batch;
        prompt-learning rows run one by one afterwards."""
        with self._lock:
            outcomes: list[Outcome | None] = [None] * len(requests)
            batched: list[_Row] = []
            single: list[_Row] = []
            for index, request in enumerate(requests):
                try:
                    row = self._prepare(index, request)
                except ServingError as exc:
                    outcomes[index] = exc
                    continue
                (single if isinstance(row.adapter, PromptLearningAdapter) else batched).append(row)
            if batched:
                self._decode(batched, on_update)
            for row in single:
                self._decode([row], on_update)
            for row in batched + single:
                outcomes[row.index] = row.state.result()
            return outcomes  # type: ignore[return-value]

    def _prepare(self, index: int, request: GenerationRequest) -> _Row:
        request.params.check()
        adapter = self.adapters.get(request.adapter) if request.adapter else None
        prompt_ids = self.encode_prompt(request.prompt, request.tools)
        if not prompt_ids:
            raise InvalidRequest("empty prompt: it encodes to no tokens")
        virtual = getattr(adapter, "model", None)
        if virtual is not None:  # prompt learning: virtual tokens take context too
            virtual = virtual.active_peft_config.num_virtual_tokens
        room = self.max_context_tokens - len(prompt_ids) - (virtual or 0)
        if room < 1:
            raise InvalidRequest(
                f"prompt of {len(prompt_ids)} tokens leaves no room in the "
                f"{self.max_context_tokens}-token context"
            )
        max_tokens = min(request.params.max_tokens or self.default_max_tokens, room)
        state = _RowState(self, len(prompt_ids), request.params, max_tokens, request.is_cancelled)
        if request.params.temperature > 0:
            seed = request.params.seed
            state.generator = torch.Generator(device=self.device)
            state.generator.manual_seed(seed if seed is not None else secrets.randbits(63))
        return _Row(index=index, prompt_ids=prompt_ids, adapter=adapter, state=state)

    def _report(self, row: _Row, on_update: UpdateCallback | None) -> None:
        if on_update is None or row.finished_reported:
            return
        delta = row.state.take_delta()
        if row.state.done:
            row.finished_reported = True
            on_update(row.index, delta, row.state.result(), True)
        elif delta:
            on_update(row.index, delta, row.state.result(), False)

    def _next_tokens(self, logits: torch.Tensor, rows: Sequence[_Row]) -> list[int]:
        """Greedy argmax, or per-row temperature / top-p sampling with the row's generator."""
        tokens = logits.argmax(dim=-1).tolist()
        for i, row in enumerate(rows):
            params = row.state.params
            if params.temperature <= 0:
                continue
            probs = torch.softmax(logits[i].float() / params.temperature, dim=-1)
            if params.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                outside = sorted_probs.cumsum(0) - sorted_probs > params.top_p
                sorted_probs[outside] = 0.0
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
            tokens[i] = int(torch.multinomial(probs, 1, generator=row.state.generator))
        return tokens

    def _prefill_padded(self, rows: Sequence[_Row]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Forward of the left-padded prompts: (output, attention mask, next positions)."""
        width = max(len(r.prompt_ids) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            mask[i, width - len(row.prompt_ids) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        # Positions as Hugging Face's generate makes them for left padding.
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
        return out, mask, positions[:, -1:] + 1

    def _prefill_virtual(self, row: _Row) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Forward of one prompt behind a prompt-learning adapter's virtual tokens, placed
        as PEFT's forward (what training saw) places them: prefix tuning as n cached
        key/value positions before the prompt (prompt positions start at n); prompt and
        P-tuning as n embeddings before the prompt's (positions from 0)."""
        peft_model = row.adapter.model  # type: ignore[union-attr]
        virtual = peft_model.active_peft_config.num_virtual_tokens
        ids = torch.tensor([row.prompt_ids], device=self.device)
        mask = torch.ones((1, virtual + ids.shape[1]), dtype=torch.long, device=self.device)
        positions = torch.arange(mask.shape[1], device=self.device)[None]
        if row.adapter.peft_type == "PREFIX_TUNING":  # type: ignore[union-attr]
            inputs = {"input_ids": ids, self._cache_arg: peft_model.get_prompt(batch_size=1)}
            positions = positions[:, virtual:]
        else:
            prompts = peft_model.get_prompt(batch_size=1)
            embeds = self.model.get_input_embeddings()(ids)
            inputs = {"inputs_embeds": torch.cat([prompts.to(embeds.dtype), embeds], dim=1)}
        out = self.model(
            attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1, **inputs
        )
        return out, mask, positions[:, -1:] + 1

    def _decode(self, rows: list[_Row], on_update: UpdateCallback | None) -> None:
        """Prefill, then one token per live row per step; finished rows leave the batch.
        Rows are either LoRA/base rows (any number, per-row adapters) or one
        prompt-learning row."""
        virtual = len(rows) == 1 and isinstance(rows[0].adapter, PromptLearningAdapter)
        lora = BatchedLora(self.model, [None if virtual else r.adapter for r in rows])  # type: ignore[misc]
        live = list(rows)
        with lora:
            out, mask, next_pos = (
                self._prefill_virtual(rows[0]) if virtual else self._prefill_padded(rows)
            )
            cache = getattr(out, "cache", None)
            if cache is None:  # transformers before the rename
                cache = out.past_key_values
            while True:
                tokens = self._next_tokens(out.logits[:, -1, :], live)
                for row, token in zip(live, tokens, strict=True):
                    row.state.push(token)
                    self._report(row, on_update)
                keep = [i for i, row in enumerate(live) if not row.state.done]
                if not keep:
                    return
                step_ids = torch.tensor([[tokens[i]] for i in keep], device=self.device)
                if len(keep) < len(live):
                    index = torch.tensor(keep, device=self.device)
                    cache.batch_select_indices(index)
                    mask, next_pos = mask[index], next_pos[index]
                    lora.select_rows(index)
                    live = [live[i] for i in keep]
                mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
                out = self.model(
                    input_ids=step_ids,
                    attention_mask=mask,
                    position_ids=next_pos,
                    use_cache=True,
                    **{self._cache_arg: cache},
                )
                next_pos = next_pos + 1
