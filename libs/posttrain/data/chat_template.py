"""Chat rows -> token ids and loss labels, rendered with the base model's own chat template.

Owns how a normalised chat row (`{"messages": [...], "tools"?: [...]}`) becomes training
tokens, and how a prompt is rendered for generation (evaluation and serving use the same
function, so train and serve see the same tokens). It must never change the text a
template produces: templates are the base model's, applied with `apply_chat_template`.

How assistant tokens are found (SmolLM2's template has no `{% generation %}` block, so
`return_assistant_tokens_mask` is not available): for each assistant message i, render
`messages[:i]` with the generation prompt (P) and `messages[:i+1]` without (F). F[len(P):]
is exactly what the model must generate for that turn, whatever the template does to the
content (trims, tool-call rendering). The conversation is tokenized piece by piece:
prompt pieces (label -100) and assistant pieces, whose tokens are labelled up to and
including the first end-of-turn token (EOS); anything the template puts after it (the
"\\n" of ChatML) is not learned. A template that emits no end-of-turn token gets the EOS
appended and learned. Piece-wise tokenization gives the same prompt tokens as
`render_prompt`, which is what the model sees when it generates. It assumes the tokenizer
does not add a prefix space per call (true of byte-level BPE: GPT-2, Llama 3, Qwen,
SmolLM); a template whose render of a prefix is not a prefix of the longer render (some
"thinking" templates drop old reasoning) is refused with ChatTemplateError.

Truncation (`TruncationPolicy`): "drop" drops rows longer than max_seq_len; "truncate_left"
keeps the last max_seq_len tokens when the last assistant turn and the prompt piece
before it still fit whole (else the row is dropped), and masks assistant turns that the
cut splits. Dropped rows are counted by reason in EncodeStats.

Tokenizers without a chat template (tiny test tokenizers) get FALLBACK_CHAT_TEMPLATE:
ChatML with the tokenizer's EOS as the end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

IGNORE_INDEX = -100

FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# End-of-turn tokens of common templates that differ from the tokenizer's EOS.
_KNOWN_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


class ChatTemplateError(ValueError):
    """The template cannot render this row, or not split it into prompt and assistant
    pieces."""


class NoAssistantTurn(ChatTemplateError):
    """The row has nothing to learn: no assistant message."""


class TruncationPolicy(StrEnum):
    DROP = "drop"
    TRUNCATE_LEFT = "truncate_left"


@dataclass(frozen=True, slots=True)
class EncodedChat:
    """One conversation's tokens; labels are IGNORE_INDEX except on assistant tokens."""

    input_ids: list[int]
    labels: list[int]
    # [start, end) token positions of each assistant turn's labelled tokens.
    assistant_spans: list[tuple[int, int]]
    # Where the prompt piece before each assistant turn starts (same order as the spans).
    prompt_starts: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_label_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass(slots=True)
class EncodeStats:
    """What encode_rows kept and dropped, by reason (row indices are 0-based)."""

    rows: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_assistant: int = 0
    dropped_template_error: int = 0
    tokens: int = 0
    label_tokens: int = 0
    max_len: int = 0
    dropped_examples: list[tuple[int, str]] = field(default_factory=list)  # first 20

    @property
    def dropped(self) -> int:
        return self.dropped_too_long + self.dropped_no_assistant + self.dropped_template_error

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "kept": self.kept,
            "dropped": self.dropped,
            "truncated": self.truncated,
            "dropped_too_long": self.dropped_too_long,
            "dropped_no_assistant": self.dropped_no_assistant,
            "dropped_template_error": self.dropped_template_error,
            "tokens": self.tokens,
            "label_tokens": self.label_tokens,
            "max_len": self.max_len,
        }


def end_of_turn_ids(tokenizer: Any) -> set[int]:
    """The tokenizer's EOS plus the known end-of-turn specials it has as single tokens."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_tokens", ())) | set(
        getattr(tokenizer, "added_tokens_encoder", {})
    )
    for token in _KNOWN_END_OF_TURN:
        if token in vocab and token in special and token != getattr(tokenizer, "pad_token", None):
            ids.add(int(vocab[token]))
    if not ids:
        raise ChatTemplateError("tokenizer has no EOS token; cannot mark the end of a turn")
    return ids


def _render(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Any, generation_prompt: bool
) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(
            list(messages),
            tools=tools or None,
            chat_template=tokenizer.chat_template or FALLBACK_CHAT_TEMPLATE,
            add_generation_prompt=generation_prompt,
            tokenize=False,
        )
    except (TemplateError, ValueError) as exc:  # e.g. raise_exception('roles must alternate')
        raise ChatTemplateError(f"chat template refused the conversation: {exc}") from exc


def _pieces(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    tools: Any,
    generation_prompt: bool,
) -> list[tuple[str, bool]]:
    """(text, is_assistant) pieces whose concatenation is the rendered conversation.

    Messages after the last assistant turn are left out unless a generation prompt is
    asked for (they would carry no label)."""
    pieces: list[tuple[str, bool]] = []
    consumed = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if i == 0:
            raise ChatTemplateError("the conversation starts with an assistant turn: no prompt")
        prompt = _render(tokenizer, messages[:i], tools, generation_prompt=True)
        full = _render(tokenizer, messages[: i + 1], tools, generation_prompt=False)
        if not prompt.startswith(consumed) or not full.startswith(prompt):
            raise ChatTemplateError(
                f"chat template is not prefix-stable at message {i}: rendering "
                "messages[:i] (+ generation prompt) is not a prefix of messages[:i+1]"
            )
        pieces.append((prompt[len(consumed) :], False))
        pieces.append((full[len(prompt) :], True))
        consumed = full
    if generation_prompt:
        prompt = _render(tokenizer, messages, tools, generation_prompt=True)
        if not prompt.startswith(consumed):
            raise ChatTemplateError("chat template is not prefix-stable at the generation prompt")
        pieces.append((prompt[len(consumed) :], False))
    return pieces


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def encode_chat(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    *,
    tools: Any = None,
    eot_ids: Iterable[int] | None = None,
) -> EncodedChat:
    """Render a conversation with the tokenizer's chat template; loss only on assistant turns.

    Each assistant turn's labelled tokens decode to exactly what the template renders for
    it up to and including its end-of-turn token (for ChatML: content + "<|im_end|>").
    Raises ChatTemplateError when the template cannot be split, or the row has no
    assistant turn."""
    eot = set(eot_ids) if eot_ids is not None else end_of_turn_ids(tokenizer)
    input_ids: list[int] = []
    labels: list[int] = []
    spans: list[tuple[int, int]] = []
    prompt_starts: list[int] = []
    for text, is_assistant in _pieces(messages, tokenizer, tools, generation_prompt=False):
        ids = _ids(tokenizer, text)
        if not is_assistant:
            prompt_starts.append(len(input_ids))
            input_ids += ids
            labels += [IGNORE_INDEX] * len(ids)
            continue
        end = next((j + 1 for j, token in enumerate(ids) if token in eot), None)
        if end is None:  # the template ends turns without an EOS: append one, learn it
            ids.append(int(tokenizer.eos_token_id))
            end = len(ids)
        start = len(input_ids)
        input_ids += ids
        labels += ids[:end] + [IGNORE_INDEX] * (len(ids) - end)
        spans.append((start, start + end))
    if not spans:
        raise NoAssistantTurn("row has no assistant turn to learn from")
    return EncodedChat(input_ids, labels, assistant_spans=spans, prompt_starts=prompt_starts)


def render_prompt(
    messages: Sequence[Mapping[str, Any]], tokenizer: Any, *, tools: Any = None
) -> list[int]:
    """Token ids of the conversation so far plus the assistant generation prompt.

    Same template and the same piece-wise tokenization as encode_chat, so a model
    generates from exactly the tokens it was trained on."""
    ids: list[int] = []
    for text, _ in _pieces(messages, tokenizer, tools, generation_prompt=True):
        ids += _ids(tokenizer, text)
    return ids


def truncate_left(encoded: EncodedChat, max_len: int) -> EncodedChat | None:
    """The last max_len tokens, or None when the last assistant turn (and the prompt
    piece right before it) would not fit whole. Assistant turns cut by the window lose
    their labels."""
    if len(encoded) <= max_len:
        return encoded
    cut = len(encoded) - max_len
    if cut > encoded.prompt_starts[-1]:
        return None
    labels = encoded.labels[cut:]
    spans, starts = [], []
    for (start, end), prompt_start in zip(
        encoded.assistant_spans, encoded.prompt_starts, strict=True
    ):
        if end <= cut:
            continue
        if start < cut:  # split by the window: don't learn a turn without its start
            labels[: end - cut] = [IGNORE_INDEX] * (end - cut)
            continue
        spans.append((start - cut, end - cut))
        starts.append(max(prompt_start - cut, 0))
    return EncodedChat(encoded.input_ids[cut:], labels, assistant_spans=spans, prompt_starts=starts)


def encode_rows(
    rows: Iterable[Mapping[str, Any]],
    tokenizer: Any,
    *,
    max_seq_len: int,
    truncation: TruncationPolicy | str = TruncationPolicy.DROP,
) -> tuple[list[EncodedChat], EncodeStats]:
    """encode_chat over normalised rows, applying the truncation policy; counts drops."""
    policy = TruncationPolicy(truncation)
    eot = end_of_turn_ids(tokenizer)
    stats = EncodeStats()
    encoded: list[EncodedChat] = []

    def drop(index: int, reason: str) -> None:
        if len(stats.dropped_examples) < 20:
            stats.dropped_examples.append((index, reason))

    for index, row in enumerate(rows):
        stats.rows += 1
        try:
            item = encode_chat(row["messages"], tokenizer, tools=row.get("tools"), eot_ids=eot)
        except NoAssistantTurn as exc:
            stats.dropped_no_assistant += 1
            drop(index, str(exc))
            continue
        except ChatTemplateError as exc:
            stats.dropped_template_error += 1
            drop(index, str(exc))
            continue
        if len(item) > max_seq_len:
            shorter = (
                truncate_left(item, max_seq_len)
                if policy is TruncationPolicy.TRUNCATE_LEFT
                else None
            )
            if shorter is None or shorter.num_label_tokens == 0:
                stats.dropped_too_long += 1
                drop(index, f"{len(item)} tokens > max_seq_len {max_seq_len}")
                continue
            stats.truncated += 1
            item = shorter
        stats.kept += 1
        stats.tokens += len(item)
        stats.label_tokens += item.num_label_tokens
        stats.max_len = max(stats.max_len, len(item))
        encoded.append(item)
    return encoded, stats
