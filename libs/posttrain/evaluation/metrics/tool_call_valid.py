"""tool_call_valid: the output is a well-formed OpenAI-style tool call for one of the
case's tools, with arguments valid against that tool's parameter schema.

Accepted output (as text; code fences and surrounding prose allowed by default):
    {"tool_calls": [{"id"?: str, "type": "function",
                     "function": {"name": str, "arguments": {...} | "<JSON object text>"}}]}
or the bare list of calls. Each call's name must be one of the case's `tools`
(OpenAI function definitions) when it has them, and its arguments must satisfy that
tool's `parameters` schema, else the case's `json_schema`. With
require_reference_match the case's reference `{"name", "arguments"}` must also equal
the first call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from posttrain.evaluation.metrics.base import CaseContext, CaseScore, Metric, setting
from posttrain.evaluation.metrics.json_valid import schema_error
from posttrain.evaluation.metrics.text import extract_json


@dataclass(frozen=True)
class ToolCallValidConfig:
    lenient: bool = setting(True, "also accept JSON inside a ```json block or surrounded by prose")
    require_reference_match: bool = setting(
        False, "the first call must also equal the case's reference {name, arguments}"
    )


def tool_schemas(tools: list[dict[str, Any]] | None) -> dict[str, dict[str, Any] | None]:
    """Tool name -> its parameters schema, from OpenAI function definitions."""
    out: dict[str, dict[str, Any] | None] = {}
    for tool in tools or []:
        function = tool.get("function", tool)
        out[function["name"]] = function.get("parameters")
    return out


def parse_calls(value: Any) -> list[tuple[str, dict[str, Any]]]:
    """[(name, arguments)] of an OpenAI tool_calls value; ValueError says what is wrong."""
    calls = value.get("tool_calls") if isinstance(value, dict) else value
    if not isinstance(calls, list) or not calls:
        raise ValueError("expected {'tool_calls': [...]} or a non-empty list of calls")
    parsed = []
    for i, call in enumerate(calls):
        where = f"tool_calls[{i}]"
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise ValueError(f"{where}: a call is an object with a 'function' object")
        if call.get("type", "function") != "function":
            raise ValueError(f"{where}.type: must be 'function'")
        if "id" in call and not isinstance(call["id"], str):
            raise ValueError(f"{where}.id: must be a string")
        name, arguments = call["function"].get("name"), call["function"].get("arguments")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}.function.name: a non-empty string is required")
        if isinstance(arguments, str):  # OpenAI sends arguments as JSON text
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}.function.arguments: not JSON: {exc.msg}") from exc
        if not isinstance(arguments, dict):
            raise ValueError(f"{where}.function.arguments: must be a JSON object")
        parsed.append((name, arguments))
    return parsed


def score(case, output: str, config: ToolCallValidConfig, ctx: CaseContext) -> CaseScore:
    try:
        calls = parse_calls(extract_json(output, lenient=config.lenient))
    except ValueError as exc:
        return CaseScore(0.0, False, str(exc))
    schemas = tool_schemas(case.tools)
    for i, (name, arguments) in enumerate(calls):
        if schemas and name not in schemas:
            return CaseScore(0.0, False, f"tool_calls[{i}]: unknown tool {name!r}")
        schema = schemas.get(name) or case.json_schema
        error = schema_error(arguments, schema)
        if error:
            return CaseScore(0.0, False, f"tool_calls[{i}].function.arguments: {error}")
    if config.require_reference_match and isinstance(case.reference, dict):
        expected = (case.reference.get("name"), case.reference.get("arguments"))
        if calls[0] != expected:
            return CaseScore(0.0, False, f"call {calls[0][0]}({calls[0][1]}) != reference")
    return CaseScore(1.0, True)


def check_case(row: dict[str, Any]) -> list[tuple[str, str]]:
    tools, schema = row.get("tools"), row.get("json_schema")
    if not tools and schema is None:
        return [("tools", "tool_call_valid needs the case's tools (or a json_schema)")]
    if tools is not None:
        if not isinstance(tools, list):
            return [("tools", "must be a list of OpenAI function definitions")]
        for i, tool in enumerate(tools):
            function = tool.get("function", tool) if isinstance(tool, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                return [(f"tools[{i}]", "needs function.name (an OpenAI function definition)")]
    return []


METRIC = Metric(
    name="tool_call_valid",
    kind="case",
    config=ToolCallValidConfig,
    help="1 when the output is an OpenAI tool_calls value for a known tool with valid arguments",
    outputs={"tool_call_valid": True},
    score=score,
    check_case=check_case,
)
