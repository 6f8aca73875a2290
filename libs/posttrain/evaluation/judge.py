"""LLM-as-judge: single-answer grading and position-swapped pairwise comparison.

A `Judge` grades one answer 1..5 against a rubric (and the reference when there is one)
and says which of two answers is better. Judges:
- LLMJudge: prompts a chat backend and parses its reply. Backends: any Generator
  via GeneratorBackend (a registered model loaded locally, kind "model"; a model served
  by Triton through TritonGenerator, kind "triton"), or an external OpenAI-compatible endpoint (OpenAIChatBackend:
  POST {base_url}/chat/completions, API key from an environment variable).
- RuleJudge: deterministic, no model: grades by token F1 with the reference. For tests
  and the offline demo; calibrate it like any other judge before trusting it.

`pairwise` asks the judge twice, the answers swapped (candidate as A, then as B). The
candidate wins only when both verdicts prefer it, loses only when both prefer the
baseline; anything else (a position-biased judge answering "A" both times, a tie, an
unparseable reply) is a tie, so position bias cancels instead of deciding.

A judge's identity in a report: `id` (which judge: backend and model) and `version`
(a hash of its prompts and parsing, and the model's version), so a judge change shows.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from posttrain.evaluation.generation import Generator, Messages
from posttrain.evaluation.metrics.base import setting
from posttrain.evaluation.metrics.text import references
from posttrain.evaluation.metrics.token_f1 import best_f1

Preference = Literal["A", "B", "tie"]


class JudgeError(RuntimeError):
    """The judge backend did not answer (HTTP error, timeout, malformed response)."""


@dataclass(frozen=True)
class GradeRequest:
    prompt: Messages
    answer: str
    reference: Any = None
    rubric: str = ""


@dataclass(frozen=True)
class CompareRequest:
    prompt: Messages
    answer_a: str
    answer_b: str
    reference: Any = None
    rubric: str = ""


@dataclass(frozen=True)
class Grade:
    score: int | None  # 1..5; None when the reply had no grade in it
    rationale: str = ""
    raw: str = ""


@runtime_checkable
class Judge(Protocol):
    id: str
    version: str

    def grade(self, request: GradeRequest) -> Grade: ...

    def compare(self, request: CompareRequest) -> Preference: ...


@dataclass(frozen=True)
class PairwiseOutcome:
    outcome: Literal["win", "loss", "tie"]  # for the candidate
    first: Preference  # candidate shown as A
    second: Preference  # candidate shown as B

    def describe(self) -> str:
        return f"{self.outcome} (candidate as A: {self.first}; as B: {self.second})"


def pairwise(
    judge: Judge,
    *,
    prompt: Messages,
    candidate: str,
    baseline: str,
    reference: Any = None,
    rubric: str = "",
) -> PairwiseOutcome:
    """Compare candidate and baseline twice with positions swapped; a win or a loss only
    when both orders agree, else a tie."""
    first = judge.compare(CompareRequest(prompt, candidate, baseline, reference, rubric))
    second = judge.compare(CompareRequest(prompt, baseline, candidate, reference, rubric))
    if first == "A" and second == "B":
        outcome = "win"
    elif first == "B" and second == "A":
        outcome = "loss"
    else:
        outcome = "tie"
    return PairwiseOutcome(outcome, first, second)


# ----------------------------------------------------------------------------- parsing

_SCORE_PATTERNS = (
    re.compile(r'"score"\s*:\s*"?([1-5])\b'),
    re.compile(r"\[\[\s*([1-5])\s*\]\]"),
    re.compile(r"\b(?:score|rating|grade)\s*(?:is|of|[:=])?\s*\**\s*([1-5])\b", re.IGNORECASE),
    re.compile(r"\b([1-5])\s*(?:/|out of)\s*5\b", re.IGNORECASE),
)
_VERDICT_PATTERNS = (
    re.compile(r'"(?:verdict|winner|better)"\s*:\s*"(A|B|tie)"', re.IGNORECASE),
    re.compile(r"\[\[\s*(A|B|tie|C)\s*\]\]", re.IGNORECASE),
    re.compile(
        r"\b(?:verdict|winner|better answer|answer)\s*(?:is|[:=])\s*\**\s*(A|B|tie)\b",
        re.IGNORECASE,
    ),
    re.compile(r"\b(?:answer|assistant|response)\s+(A|B)\s+is\s+better\b", re.IGNORECASE),
)


def parse_score(reply: str) -> int | None:
    """A 1..5 grade from a judge's reply: JSON {"score": n}, [[n]], "Score: n", "n/5", and
    as a last resort a reply that is only the digit. The last match of the first pattern
    that matches wins (reasoning often quotes the scale first, the verdict last)."""
    for pattern in _SCORE_PATTERNS:
        found = pattern.findall(reply)
        if found:
            return int(found[-1])
    bare = reply.strip().strip(".*")
    return int(bare) if bare in {"1", "2", "3", "4", "5"} else None


def parse_preference(reply: str) -> Preference | None:
    """'A', 'B' or 'tie' from a judge's reply ([[A]], "Verdict: B", {"verdict": "tie"},
    "Answer A is better", or a reply that is only the letter); None when absent."""
    for pattern in _VERDICT_PATTERNS:
        found = pattern.findall(reply)
        if found:
            value = found[-1].upper()
            return "tie" if value in ("TIE", "C") else value  # type: ignore[return-value]
    bare = reply.strip().strip(".*").upper()
    if bare in ("A", "B"):
        return bare  # type: ignore[return-value]
    return "tie" if bare == "TIE" else None


# ----------------------------------------------------------------------------- LLM judge

GRADE_SYSTEM = (
    "You are an impartial grader of an AI assistant's answer. Grade the answer to the "
    "conversation below on a scale of 1 (unacceptable) to 5 (excellent), following the "
    "rubric. Be strict; judge content, not length. Give one or two sentences of "
    "reasoning, then end with a line 'Score: N'."
)
COMPARE_SYSTEM = (
    "You are an impartial judge comparing two answers (A and B) of AI assistants to the "
    "same conversation, following the rubric. Do not let the order of the answers or "
    "their length influence you. Give one or two sentences of reasoning, then end with "
    "a line 'Verdict: A', 'Verdict: B' or 'Verdict: tie'."
)
JUDGE_PROMPT_REVISION = "2"  # bump with any change to the prompts or the parsers


def _conversation(prompt: Messages) -> str:
    return "\n".join(f"[{m['role']}] {m['content']}" for m in prompt)


def _reference_text(reference: Any) -> str:
    refs = references(reference)
    if refs:
        return "\n".join(refs)
    return "" if reference is None else json.dumps(reference, sort_keys=True)


def grade_messages(request: GradeRequest) -> Messages:
    parts = [f"Rubric:\n{request.rubric or '(none: judge helpfulness and correctness)'}"]
    parts.append(f"Conversation:\n{_conversation(request.prompt)}")
    if request.reference is not None:
        parts.append(f"Reference answer:\n{_reference_text(request.reference)}")
    parts.append(f"Answer to grade:\n{request.answer}")
    return [
        {"role": "system", "content": GRADE_SYSTEM},
        {"role": "user", "content": "\n\n".join(parts)},
    ]


def compare_messages(request: CompareRequest) -> Messages:
    parts = [f"Rubric:\n{request.rubric or '(none: judge helpfulness and correctness)'}"]
    parts.append(f"Conversation:\n{_conversation(request.prompt)}")
    if request.reference is not None:
        parts.append(f"Reference answer:\n{_reference_text(request.reference)}")
    parts.append(f"Answer A:\n{request.answer_a}")
    parts.append(f"Answer B:\n{request.answer_b}")
    return [
        {"role": "system", "content": COMPARE_SYSTEM},
        {"role": "user", "content": "\n\n".join(parts)},
    ]


class ChatBackend(Protocol):
    id: str  # which model behind which endpoint
    version: str  # the model's version, when known

    def complete(self, messages: Messages) -> str: ...


class LLMJudge:
    """A judge that asks a chat model; unparseable replies grade None / compare as tie."""

    def __init__(self, backend: ChatBackend) -> None:
        self.backend = backend
        self.id = backend.id
        self.version = hashlib.sha256(
            "\n".join(
                [GRADE_SYSTEM, COMPARE_SYSTEM, JUDGE_PROMPT_REVISION, backend.version]
            ).encode()
        ).hexdigest()[:16]

    def grade(self, request: GradeRequest) -> Grade:
        reply = self.backend.complete(grade_messages(request))
        return Grade(parse_score(reply), rationale=reply.strip(), raw=reply)

    def compare(self, request: CompareRequest) -> Preference:
        return parse_preference(self.backend.complete(compare_messages(request))) or "tie"


class GeneratorBackend:
    """A registered model as the judge: any Generator (Triton-served or local), greedy."""

    def __init__(
        self,
        generator: Generator,
        *,
        id: str,  # noqa: A002 - the judge's identity, e.g. "model:<model_version_id>"
        version: str = "",
        max_new_tokens: int = 256,
        seed: int = 0,
    ) -> None:
        self.generator = generator
        self.id = id
        self.version = version
        self.max_new_tokens = max_new_tokens
        self.seed = seed

    def complete(self, messages: Messages) -> str:
        return self.generator.generate([messages], self.max_new_tokens, self.seed)[0].text


class OpenAIChatBackend:
    """An OpenAI-compatible endpoint: POST {base_url}/chat/completions, temperature 0.

    base_url includes the version prefix (e.g. http://host:8000/v1). The API key is read
    from the environment variable `api_key_env` at call time (never stored in config);
    no key sends no Authorization header (local servers). 429 and 5xx are retried with
    exponential backoff; other HTTP errors raise JudgeError at once."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "",
        timeout_s: float = 60.0,
        max_tokens: int = 256,
        seed: int = 0,
        max_retries: int = 2,
        backoff_s: float = 1.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.seed = seed
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.id = f"openai:{model}@{self.base_url}"
        self.version = model

    def complete(self, messages: Messages) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": messages,
                "temperature": 0,
                "max_tokens": self.max_tokens,
                "seed": self.seed,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = f"{self.base_url}/chat/completions"
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    payload = json.loads(response.read())
                break
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace")
                if (exc.code == 429 or exc.code >= 500) and attempt < self.max_retries:
                    time.sleep(self.backoff_s * 2**attempt)
                    continue
                raise JudgeError(f"{url}: HTTP {exc.code}: {detail}") from exc
            except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
                if attempt < self.max_retries and not isinstance(exc, json.JSONDecodeError):
                    time.sleep(self.backoff_s * 2**attempt)
                    continue
                raise JudgeError(f"{url}: {exc}") from exc
        try:
            return payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as exc:
            raise JudgeError(f"{url}: no choices[0].message.content in the response") from exc


# ----------------------------------------------------------------------------- rule judge


class RuleJudge:
    """Deterministic judge without a model: grade = 1 + round(4 * token F1 with the best
    reference) (non-text references compare as canonical JSON); compare prefers the
    answer with the higher F1 when it leads by more than `margin`, else tie. No
    reference: no grade, tie. It knows nothing of the rubric."""

    id = "rule:token-f1"

    def __init__(self, margin: float = 0.05) -> None:
        self.margin = margin
        self.version = f"1:margin={margin}"

    @staticmethod
    def _refs(reference: Any) -> list[str]:
        return references(reference) or ([] if reference is None else [_reference_text(reference)])

    def grade(self, request: GradeRequest) -> Grade:
        refs = self._refs(request.reference)
        if not refs:
            return Grade(None, "no reference to grade against")
        f1 = best_f1(request.answer, refs)
        return Grade(1 + round(4 * f1), f"token F1 {f1:.3f}")

    def compare(self, request: CompareRequest) -> Preference:
        refs = self._refs(request.reference)
        if not refs:
            return "tie"
        a, b = best_f1(request.answer_a, refs), best_f1(request.answer_b, refs)
        if a - b > self.margin:
            return "A"
        if b - a > self.margin:
            return "B"
        return "tie"


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class JudgeConfig:
    """Which judge an evaluation uses (YAML/env-loadable)."""

    kind: str = setting(
        "rule",
        "rule | model (a registered model via a Generator) | openai | triton (a model "
        "served by Triton, through TritonGenerator)",
    )
    model: str = setting(
        "",
        "model: the model version id; openai: the endpoint's model name; triton: the "
        "version served there (optional: the judge's version, so a swap shows)",
    )
    base_url: str = setting("", "openai: base URL including /v1")
    api_key_env: str = setting("", "openai: the environment variable holding the API key")
    timeout_s: float = setting(60.0, "openai, triton: per-request timeout in seconds")
    triton_url: str = setting("", "triton: Triton's gRPC host:port")
    triton_model: str = setting("", "triton: the LLM model's name in Triton")
    lora_name: str = setting("", "triton: the adapter to judge with ('' = the model itself)")
    max_tokens: int = setting(256, "tokens the judge may write per reply")
    seed: int = setting(0, "seed sent to the judge model")


def build_judge(config: JudgeConfig, *, generator: Generator | None = None) -> Judge:
    """The judge a config describes; kind "model" needs the generator serving that model
    (kind "triton" makes its own TritonGenerator unless one is given)."""
    if config.kind == "rule":
        return RuleJudge()
    if config.kind == "model":
        if generator is None or not config.model:
            raise ValueError("a model judge needs config.model and a generator for it")
        backend = GeneratorBackend(
            generator,
            id=f"model:{config.model}",
            version=config.model,
            max_new_tokens=config.max_tokens,
            seed=config.seed,
        )
        return LLMJudge(backend)
    if config.kind == "openai":
        if not config.base_url or not config.model:
            raise ValueError("an openai judge needs base_url and model")
        return LLMJudge(
            OpenAIChatBackend(
                config.base_url,
                config.model,
                api_key_env=config.api_key_env,
                timeout_s=config.timeout_s,
                max_tokens=config.max_tokens,
                seed=config.seed,
            )
        )
    if config.kind == "triton":
        if not config.triton_url or not config.triton_model:
            raise ValueError("a triton judge needs triton_url and triton_model")
        if generator is None:
            from posttrain.evaluation.generation import TritonGenerator

            generator = TritonGenerator(
                config.triton_url,
                config.triton_model,
                config.lora_name,
                concurrency=1,
                timeout_s=config.timeout_s,
            )
        served = (
            f"{config.triton_model}/{config.lora_name}" if config.lora_name else config.triton_model
        )
        backend = GeneratorBackend(
            generator,
            id=f"triton:{served}@{config.triton_url}",
            version=config.model or served,
            max_new_tokens=config.max_tokens,
            seed=config.seed,
        )
        return LLMJudge(backend)
    raise ValueError(f"unknown judge kind {config.kind!r}: rule | model | openai | triton")
