"""Text helpers the metrics share: answer normalisation, tokens, references, JSON in output.

Normalisation is SQuAD's: lower case, punctuation removed, articles (a/an/the) removed
where asked, whitespace collapsed. Tokens are the whitespace-separated words of the
normalised text.
"""

from __future__ import annotations

import json
import re
import string
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def normalize(text: str, *, drop_articles: bool = True) -> str:
    """Lower case, punctuation -> space, optionally no articles, single spaces."""
    text = text.lower().translate(_PUNCT)
    if drop_articles:
        text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def tokens(text: str, *, normalise: bool = True, drop_articles: bool = True) -> list[str]:
    return normalize(text, drop_articles=drop_articles).split() if normalise else text.split()


def references(reference: Any) -> list[str]:
    """The acceptable reference answers of a case: a string, or a list of strings."""
    if isinstance(reference, str):
        return [reference]
    if isinstance(reference, list) and all(isinstance(r, str) for r in reference):
        return list(reference)
    return []


def check_text_reference(row: dict[str, Any]) -> list[tuple[str, str]]:
    """The case must have a reference string (or a non-empty list of strings)."""
    if not references(row.get("reference")):
        return [("reference", "a string (or a list of strings) is required by this metric")]
    return []


def extract_json(text: str, *, lenient: bool = True) -> Any:
    """The JSON value an output holds: the whole text; with `lenient` also the first
    ```json block, else the span from the first '{' or '[' to the last matching bracket
    (models wrap JSON in prose). Raises ValueError with the parser's message."""
    candidates = [text.strip()]
    if lenient:
        candidates += [m.strip() for m in _FENCE.findall(text)]
        for open_, close in (("{", "}"), ("[", "]")):
            start, end = text.find(open_), text.rfind(close)
            if 0 <= start < end:
                candidates.append(text[start : end + 1])
    errors = []
    for candidate in candidates:
        if not candidate:
            continue
        try:
            return json.loads(candidate)
        except json.JSONDecodeError as exc:
            errors.append(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    # The whole text's error says most about what went wrong.
    raise ValueError(errors[0] if errors else "empty output")
