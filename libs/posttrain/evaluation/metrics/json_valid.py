"""json_valid: the output is JSON and, when the case gives a json_schema, valid against it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jsonschema

from posttrain.evaluation.metrics.base import CaseContext, CaseScore, Metric, setting
from posttrain.evaluation.metrics.text import extract_json


@dataclass(frozen=True)
class JsonValidConfig:
    lenient: bool = setting(True, "also accept JSON inside a ```json block or surrounded by prose")
    require_object: bool = setting(False, "the value must be a JSON object")


def schema_error(value: Any, schema: dict[str, Any] | None) -> str | None:
    """The first validation error (with its JSON path), or None when valid."""
    if schema is None:
        return None
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    error = errors[0]
    return f"schema: {error.json_path}: {error.message}"


def score(case, output: str, config: JsonValidConfig, ctx: CaseContext) -> CaseScore:
    try:
        value = extract_json(output, lenient=config.lenient)
    except ValueError as exc:
        return CaseScore(0.0, False, str(exc))
    if config.require_object and not isinstance(value, dict):
        return CaseScore(0.0, False, "not a JSON object")
    error = schema_error(value, case.json_schema)
    return CaseScore(0.0 if error else 1.0, error is None, error or "")


METRIC = Metric(
    name="json_valid",
    kind="case",
    config=JsonValidConfig,
    help="1 when the output parses as JSON and satisfies the case's json_schema (if any)",
    outputs={"json_valid": True},
    score=score,
)
