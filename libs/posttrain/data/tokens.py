"""Token counting for budgets and stats: a real tokenizer when given, else an estimate.

A row's token count is the sum of its texts (message contents, tool-call arguments and
tool definitions as canonical JSON) plus `per_message_overhead_tokens` per message for
the role headers a chat template adds. It is not the exact training length: that needs
the base model's chat template, which is applied later (posttrain.data.chat_template).

ApproxTokenCounter is ceil(UTF-8 bytes / 4). Four bytes per token is the usual rule of
thumb for English with GPT-4/Llama-3-class vocabularies; because it counts bytes, not
characters, CJK text (3 bytes a character) comes out near one token per character, close
to what those tokenizers give. Expect about +-30% on ordinary prose; pass a tokenizer
for exact budgets.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

from posttrain.data.canonical import canonical_text
from posttrain.data.schemas import ChatRow


class TokenCounter(Protocol):
    name: str

    def count(self, text: str) -> int: ...


class ApproxTokenCounter:
    """ceil(len(UTF-8 bytes) / bytes_per_token); no tokenizer needed."""

    def __init__(self, bytes_per_token: float = 4.0) -> None:
        self.bytes_per_token = bytes_per_token
        self.name = f"approx:utf8_bytes/{bytes_per_token:g}"

    def count(self, text: str) -> int:
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        return math.ceil(size / self.bytes_per_token)


class HFTokenCounter:
    """Counts with a Hugging Face tokenizer: a `tokenizers.Tokenizer` or a transformers
    tokenizer. Special tokens are not added; the chat template accounts for those."""

    def __init__(self, tokenizer: Any, name: str = "") -> None:
        self._tokenizer = tokenizer
        self._fast = hasattr(tokenizer, "encode_batch")  # a tokenizers.Tokenizer
        self.name = f"hf:{name or type(tokenizer).__name__}"

    @classmethod
    def from_pretrained(cls, path: str | Path) -> HFTokenCounter:
        """From a local model directory or tokenizer.json; never reaches a hub."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if file.is_file():
            from tokenizers import Tokenizer

            return cls(Tokenizer.from_file(str(file)), name=path.name)
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(path), local_files_only=True), path.name)

    def count(self, text: str) -> int:
        if self._fast:
            return len(self._tokenizer.encode(text, add_special_tokens=False).ids)
        return len(self._tokenizer.encode(text, add_special_tokens=False))


def count_row_tokens(row: ChatRow, counter: TokenCounter, per_message_overhead: int) -> int:
    total = per_message_overhead * len(row.messages)
    for message in row.messages:
        if message["content"]:
            total += counter.count(message["content"])
        for call in message.get("tool_calls", ()):
            function = call["function"]
            total += counter.count(function["name"])
            if function["arguments"]:
                total += counter.count(canonical_text(function["arguments"]))
    if row.tools:
        total += counter.count(canonical_text(row.tools))
    return total
