"""Rows as bytes: the one canonical serialisation, the row hash, and hostile-JSON guards.

Canonical JSON (what is stored, one row per line, and what every hash is over):
UTF-8, keys sorted, no insignificant whitespace (separators "," and ":"), non-ASCII
characters written as themselves (not \\u escapes), no NaN/Infinity. This is
`json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`, so any
JSON library that sorts keys and writes compact UTF-8 reproduces it.

The row hash is sha256 of the canonical bytes (without the newline).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from posttrain.data.violations import ErrorCode, Problem

_encoder = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_text(obj: Any) -> str:
    """The canonical JSON text of a value (before UTF-8 encoding)."""
    return _encoder.encode(obj)


def canonical_json(obj: Any) -> bytes:
    """The canonical bytes of a JSON value. Raises UnicodeEncodeError on lone surrogates."""
    return _encoder.encode(obj).encode("utf-8")


def row_digest(canonical: bytes) -> bytes:
    """The 32-byte row hash of canonical row bytes."""
    return hashlib.sha256(canonical).digest()


def row_hash(row: Mapping[str, Any] | str | bytes) -> str:
    """Hex row hash of a normalised row given as a dict or as one JSON line (re-canonicalised,
    so a line from any JSON writer hashes the same as the stored one)."""
    if isinstance(row, str | bytes):
        row = json.loads(row)
    return row_digest(canonical_json(row)).hex()


def json_type(value: Any) -> str:
    """The JSON name of a Python value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if value in (math.inf, -math.inf):  # 1e999: canonical JSON could not write it back
        raise ValueError(f"number {literal[:40]} is out of range")
    return value


def json_depth_exceeds(value: Any, max_depth: int) -> bool:
    """True when containers nest deeper than max_depth (iterative: no recursion to exhaust)."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def load_json(text: str, max_depth: int, field: str = "") -> tuple[Any, Problem | None]:
    """Parses untrusted JSON text: (value, None) or (None, the problem). Never raises."""
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        return None, Problem(field, ErrorCode.TOO_DEEP, f"JSON nests deeper than {max_depth}")
    except ValueError as exc:  # JSONDecodeError is a ValueError
        return None, Problem(field, ErrorCode.BAD_JSON, f"not valid JSON: {exc}")
    if json_depth_exceeds(value, max_depth):
        return None, Problem(field, ErrorCode.TOO_DEEP, f"JSON nests deeper than {max_depth}")
    return value, None


def is_valid_unicode(text: str) -> bool:
    """False for strings holding lone surrogates (from \\ud800 escapes or undecodable bytes)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
