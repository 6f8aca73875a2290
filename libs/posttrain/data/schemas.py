"""Row schemas, and the one stored form every accepted row is normalised to.

Stored form (a "chat row"), whatever the upload's schema or format:

    {"messages": [{"role": ..., "content": ..., ...}, ...], "tools": [...]}   # tools optional

Each message has `role` (system | user | assistant | tool) and `content` (a string; ""
for an assistant turn that only calls tools). Optional keys, kept only when present and
non-empty: `name`; `tool_calls` (assistant) as
`[{"id", "type": "function", "function": {"name", "arguments": {...}}}]`, where arguments
is always a JSON *object* (an OpenAI-style JSON string is parsed, so two uploads that
differ only in the argument string's whitespace store the same row); `tool_call_id`
(tool). Top-level `tools` (function definitions a chat template renders) is kept as given.
Every other key is dropped: it is not training content and does not affect the version.
null counts as absent everywhere.

Instruction rows `{instruction, input?, response | output, system?}` become
    [system (if non-blank)] + user(instruction, or instruction + "\\n\\n" + input when input
    is non-blank) + assistant(response)
so an instruction upload and the equivalent chat upload store identical rows. Text is
stored exactly as uploaded (no trimming, no Unicode normalisation).

Parsers check types and shape only; what a well-typed row must also satisfy lives in
checks.py. Adding a schema is one parse function and one line in SCHEMAS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from posttrain.data.canonical import canonical_text, json_type, load_json
from posttrain.data.config import RowSchema
from posttrain.data.violations import ErrorCode, Problem

ROLES = ("system", "user", "assistant", "tool")


@dataclass(slots=True)
class ChatRow:
    """A row in the stored form, plus where its parts came from in the upload."""

    messages: list[dict[str, Any]]
    tools: list[Any] | None = None
    # (uploaded field path, text) of every free-text field, for PII scans and near-dups.
    texts: list[tuple[str, str]] = field(default_factory=list)
    # normalised path -> uploaded path, where they differ (instruction rows).
    paths: dict[str, str] = field(default_factory=dict)
    tokens: int = 0  # set by the pipeline before checks run

    def source_path(self, path: str) -> str:
        return self.paths.get(path, path)

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"messages": self.messages}
        if self.tools:
            obj["tools"] = self.tools
        return obj


ParseResult = tuple[ChatRow | None, list[Problem]]
RowParser = Callable[[dict[str, Any], int], ParseResult]


def _text(obj: dict[str, Any], key: str, path: str, problems: list[Problem]) -> str | None:
    """An optional string field: None when absent or null, a Problem when not a string."""
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    problems.append(
        Problem(path, ErrorCode.WRONG_TYPE, f"{key} must be a string, got {json_type(value)}")
    )
    return None


def _parse_tool_call(call: Any, path: str, max_depth: int, problems: list[Problem]) -> dict | None:
    bad = ErrorCode.BAD_TOOL_CALL
    if not isinstance(call, dict):
        problems.append(Problem(path, bad, f"a tool call must be an object, got {json_type(call)}"))
        return None
    before = len(problems)
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        problems.append(Problem(f"{path}.id", bad, "a tool call needs a non-empty string id"))
    kind = call.get("type")
    if kind is not None and kind != "function":
        message = f'type must be "function", got {str(kind)[:40]!r}'
        problems.append(Problem(f"{path}.type", bad, message))
    function = call.get("function")
    if not isinstance(function, dict):
        problems.append(
            Problem(
                f"{path}.function", bad, "a tool call needs a function object {name, arguments}"
            )
        )
        return None
    name = function.get("name")
    if not isinstance(name, str) or not name:
        problems.append(Problem(f"{path}.function.name", bad, "function name must be non-empty"))
    arguments = function.get("arguments")
    args_path = f"{path}.function.arguments"
    if isinstance(arguments, str):
        arguments, problem = load_json(arguments, max_depth, args_path)
        if problem is not None:
            problems.append(Problem(args_path, bad, f"arguments: {problem.message}"))
            return None
    if not isinstance(arguments, dict):
        problems.append(
            Problem(args_path, bad, f"arguments must be a JSON object, got {json_type(arguments)}")
        )
    if len(problems) > before:
        return None
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _parse_message(
    raw: Any, path: str, max_depth: int, problems: list[Problem]
) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        problems.append(
            Problem(
                path, ErrorCode.WRONG_TYPE, f"a message must be an object, got {json_type(raw)}"
            )
        )
        return None
    before = len(problems)
    role = _text(raw, "role", f"{path}.role", problems)
    if role is None and len(problems) == before:
        problems.append(Problem(f"{path}.role", ErrorCode.MISSING_FIELD, "message has no role"))
    message: dict[str, Any] = {"role": role}

    calls_raw = raw.get("tool_calls")
    calls_reported = len(problems)
    if calls_raw is not None:
        if not isinstance(calls_raw, list):
            problems.append(
                Problem(
                    f"{path}.tool_calls",
                    ErrorCode.BAD_TOOL_CALL,
                    f"tool_calls must be an array, got {json_type(calls_raw)}",
                )
            )
        elif calls_raw:
            calls = [
                _parse_tool_call(c, f"{path}.tool_calls[{j}]", max_depth, problems)
                for j, c in enumerate(calls_raw)
            ]
            message["tool_calls"] = calls

    typed = len(problems)
    content = _text(raw, "content", f"{path}.content", problems)
    # An assistant turn that only calls tools has no content; a broken call says enough.
    has_calls = bool(message.get("tool_calls")) or len(problems) > calls_reported
    if content is None and len(problems) == typed and not has_calls:
        problems.append(
            Problem(f"{path}.content", ErrorCode.MISSING_FIELD, "message has no content")
        )
    message["content"] = content or ""

    name = _text(raw, "name", f"{path}.name", problems)
    if name:
        message["name"] = name
    call_id = raw.get("tool_call_id")
    if call_id is not None:
        if isinstance(call_id, str) and call_id:
            message["tool_call_id"] = call_id
        else:
            problems.append(
                Problem(
                    f"{path}.tool_call_id",
                    ErrorCode.BAD_TOOL_CALL,
                    "tool_call_id must be a non-empty string",
                )
            )
    return message if len(problems) == before else None


def _parse_tools(raw: Any, problems: list[Problem]) -> list[Any] | None:
    if raw is None:
        return None
    bad = ErrorCode.BAD_TOOL_CALL
    if not isinstance(raw, list):
        problems.append(Problem("tools", bad, f"tools must be an array, got {json_type(raw)}"))
        return None
    for k, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            problems.append(
                Problem(
                    f"tools[{k}]",
                    bad,
                    'a tool must be {"type": "function", "function": {"name": ..., ...}}',
                )
            )
    return raw or None


def parse_chat(obj: dict[str, Any], max_depth: int) -> ParseResult:
    """{"messages": [...], "tools"?: [...]} -> ChatRow, or the problems found."""
    raw = obj.get("messages")
    if raw is None:
        return None, [Problem("messages", ErrorCode.MISSING_FIELD, "row has no messages")]
    if not isinstance(raw, list):
        message = f"messages must be an array, got {json_type(raw)}"
        return None, [Problem("messages", ErrorCode.WRONG_TYPE, message)]
    problems: list[Problem] = []
    messages = [_parse_message(m, f"messages[{i}]", max_depth, problems) for i, m in enumerate(raw)]
    tools = _parse_tools(obj.get("tools"), problems)
    if problems:
        return None, problems
    texts: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        assert message is not None  # no problems means every message parsed
        if message["content"]:
            texts.append((f"messages[{i}].content", message["content"]))
        for j, call in enumerate(message.get("tool_calls", ())):
            arguments = call["function"]["arguments"]
            if arguments:
                path = f"messages[{i}].tool_calls[{j}].function.arguments"
                texts.append((path, canonical_text(arguments)))
    return ChatRow(messages=messages, tools=tools, texts=texts), []  # type: ignore[arg-type]


def parse_instruction(obj: dict[str, Any], max_depth: int) -> ParseResult:
    """{instruction, input?, response | output, system?} -> ChatRow (see the module doc)."""
    problems: list[Problem] = []
    instruction = _text(obj, "instruction", "instruction", problems)
    if not problems and (instruction is None or not instruction.strip()):
        problems.append(Problem("instruction", ErrorCode.MISSING_FIELD, "instruction is empty"))
    extra = _text(obj, "input", "input", problems)
    system = _text(obj, "system", "system", problems)
    answer_key = "response" if obj.get("response") is not None else "output"
    if obj.get(answer_key) is None:
        answer_key = "response"
        problems.append(
            Problem("response", ErrorCode.MISSING_FIELD, "row has no response (or output)")
        )
    response = _text(obj, answer_key, answer_key, problems)
    if problems:
        return None, problems
    assert instruction is not None and response is not None

    messages: list[dict[str, Any]] = []
    texts: list[tuple[str, str]] = []
    paths: dict[str, str] = {}

    def add(role: str, content: str, source: str) -> None:
        i = len(messages)
        messages.append({"role": role, "content": content})
        paths[f"messages[{i}].content"] = source
        paths[f"messages[{i}].role"] = source

    if system and system.strip():
        add("system", system, "system")
        texts.append(("system", system))
    user = instruction
    texts.append(("instruction", instruction))
    if extra and extra.strip():
        user = f"{instruction}\n\n{extra}"
        texts.append(("input", extra))
    add("user", user, "instruction")
    add("assistant", response, answer_key)
    if response:
        texts.append((answer_key, response))
    return ChatRow(messages=messages, texts=texts, paths=paths), []


def parse_auto(obj: dict[str, Any], max_depth: int) -> ParseResult:
    """Chat when the row has `messages`, instruction when it has `instruction`."""
    if "messages" in obj:
        return parse_chat(obj, max_depth)
    if "instruction" in obj:
        return parse_instruction(obj, max_depth)
    message = "row has neither messages (chat schema) nor instruction (instruction schema)"
    return None, [Problem("messages", ErrorCode.MISSING_FIELD, message)]


SCHEMAS: dict[RowSchema, RowParser] = {
    RowSchema.CHAT: parse_chat,
    RowSchema.INSTRUCTION: parse_instruction,
    RowSchema.AUTO: parse_auto,
}

# Columns a CSV/Parquet file must have for a schema (any one name of each group).
REQUIRED_COLUMNS: dict[RowSchema, tuple[tuple[str, ...], ...]] = {
    RowSchema.CHAT: (("messages",),),
    RowSchema.INSTRUCTION: (("instruction",), ("response", "output")),
}
# Columns whose cells hold JSON text in CSV (and may in Parquet).
JSON_COLUMNS = ("messages", "tools")
# Columns any schema reads; CSV/Parquet columns outside these are ignored unread.
KNOWN_COLUMNS = frozenset(
    {"messages", "tools", "instruction", "input", "response", "output", "system"}
)
