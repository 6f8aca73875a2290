"""Every error code, on a known bad row, with the exact row number and field."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from posttrain.data import ErrorCode, IntakeConfig, validate_upload

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}


def _chat(*messages: dict, **extra: object) -> dict:
    return {"messages": list(messages), **extra}


def _user(text: str = "What is the weather?") -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str = "Sunny.") -> dict:
    return {"role": "assistant", "content": text}


def _call(call_id: str = "call_1", name: str = "weather", arguments: object = '{"city": "Oslo"}'):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# (case id, the bad line, config overrides, expected code, expected field). Each line is
# written as line 3 of a file: a good row, a blank line, then the bad one.
JSONL_CASES = [
    ("bad_json", b'{"messages": [', {}, ErrorCode.BAD_JSON, ""),
    ("bad_json_nan", b'{"messages": NaN}', {}, ErrorCode.BAD_JSON, ""),
    ("bad_encoding_bytes", b'{"messages": "caf\xe9"}', {}, ErrorCode.BAD_ENCODING, ""),
    (
        "bad_encoding_surrogate",
        b'{"messages": [{"role": "user", "content": "x\\ud800"}, {"role": "assistant", "content": "y"}]}',
        {},
        ErrorCode.BAD_ENCODING,
        "messages[0].content",
    ),
    (
        "row_too_long",
        json.dumps(_chat(_user("x" * 5000), _assistant())).encode(),
        {"max_row_bytes": 1000},
        ErrorCode.ROW_TOO_LONG,
        "",
    ),
    ("too_deep", b'{"messages": ' + b"[" * 80 + b"]" * 80 + b"}", {}, ErrorCode.TOO_DEEP, ""),
    (
        "too_deep_recursion",
        b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        {"max_row_bytes": 1 << 20},
        ErrorCode.TOO_DEEP,
        "",
    ),
    ("row_not_object", b"[1, 2]", {}, ErrorCode.WRONG_TYPE, ""),
    (
        "messages_not_array",
        json.dumps({"messages": "hi"}).encode(),
        {},
        ErrorCode.WRONG_TYPE,
        "messages",
    ),
    (
        "content_not_string",
        json.dumps(_chat(_user(), {"role": "assistant", "content": 42})).encode(),
        {},
        ErrorCode.WRONG_TYPE,
        "messages[1].content",
    ),
    (
        "message_not_object",
        json.dumps(_chat("hi", _assistant())).encode(),
        {},
        ErrorCode.WRONG_TYPE,
        "messages[0]",
    ),
    (
        "missing_messages",
        json.dumps({"text": "hi"}).encode(),
        {"schema": "chat"},
        ErrorCode.MISSING_FIELD,
        "messages",
    ),
    (
        "missing_role",
        json.dumps(_chat({"content": "hi"}, _assistant())).encode(),
        {},
        ErrorCode.MISSING_FIELD,
        "messages[0].role",
    ),
    (
        "missing_content",
        json.dumps(_chat({"role": "user"}, _assistant())).encode(),
        {},
        ErrorCode.MISSING_FIELD,
        "messages[0].content",
    ),
    (
        "missing_response",
        json.dumps({"instruction": "Add 2 and 2"}).encode(),
        {},
        ErrorCode.MISSING_FIELD,
        "response",
    ),
    (
        "empty_instruction",
        json.dumps({"instruction": " ", "response": "4"}).encode(),
        {},
        ErrorCode.MISSING_FIELD,
        "instruction",
    ),
    (
        "unknown_role",
        json.dumps(_chat({"role": "bot", "content": "hi"}, _assistant())).encode(),
        {},
        ErrorCode.UNKNOWN_ROLE,
        "messages[0].role",
    ),
    (
        "empty_conversation",
        json.dumps(_chat()).encode(),
        {},
        ErrorCode.EMPTY_CONVERSATION,
        "messages",
    ),
    (
        "last_turn_user",
        json.dumps(_chat(_user(), _assistant(), _user())).encode(),
        {},
        ErrorCode.LAST_TURN_NOT_ASSISTANT,
        "messages[2].role",
    ),
    (
        "empty_answer",
        json.dumps(_chat(_user(), _assistant(" \n"))).encode(),
        {},
        ErrorCode.EMPTY_ANSWER,
        "messages[1].content",
    ),
    (
        "empty_answer_mid",
        json.dumps(_chat(_user(), _assistant(""), _user(), _assistant())).encode(),
        {},
        ErrorCode.EMPTY_ANSWER,
        "messages[1].content",
    ),
    (
        "empty_response",
        json.dumps({"instruction": "Say hi", "response": ""}).encode(),
        {},
        ErrorCode.EMPTY_ANSWER,
        "response",
    ),
    (
        "empty_output",
        json.dumps({"instruction": "Say hi", "output": "  "}).encode(),
        {},
        ErrorCode.EMPTY_ANSWER,
        "output",
    ),
    (
        "too_many_tokens",
        json.dumps(_chat(_user("word " * 200), _assistant())).encode(),
        {"max_tokens_per_row": 100},
        ErrorCode.TOO_MANY_TOKENS,
        "",
    ),
    (
        "tool_call_no_id",
        json.dumps(
            _chat(
                _user(),
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
            )
        ).encode(),
        {},
        ErrorCode.BAD_TOOL_CALL,
        "messages[1].tool_calls[0].id",
    ),
    (
        "tool_call_bad_type",
        json.dumps(
            _chat(_user(), {"role": "assistant", "tool_calls": [{**_call(), "type": "code"}]})
        ).encode(),
        {},
        ErrorCode.BAD_TOOL_CALL,
        "messages[1].tool_calls[0].type",
    ),
    (
        "tool_call_args_not_json",
        json.dumps(
            _chat(_user(), {"role": "assistant", "tool_calls": [_call(arguments="{city: Oslo")]})
        ).encode(),
        {},
        ErrorCode.BAD_TOOL_CALL,
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        "tool_call_args_not_object",
        json.dumps(
            _chat(_user(), {"role": "assistant", "tool_calls": [_call(arguments="[1]")]})
        ).encode(),
        {},
        ErrorCode.BAD_TOOL_CALL,
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        "tool_calls_not_array",
        json.dumps(_chat(_user(), {"role": "assistant", "tool_calls": {"id": "x"}})).encode(),
        {},
        ErrorCode.BAD_TOOL_CALL,
        "messages[1].tool_calls",
    ),
    (
        "tool_call_on_user",
        json.dumps(
            _chat({"role": "user", "content": "x", "tool_calls": [_call()]}, _assistant())
        ).encode(),
        {},
        ErrorCode.BAD_TOOL_CALL,
        "messages[0].tool_calls",
    ),
    (
        "tool_result_without_id",
        json.dumps(
            _chat(
                _user(),
                {"role": "assistant", "tool_calls": [_call()]},
                {"role": "tool", "content": "12C"},
                _assistant(),
            )
        ).encode(),
        {},
        ErrorCode.BAD_TOOL_CALL,
        "messages[2].tool_call_id",
    ),
    (
        "tool_result_unknown_id",
        json.dumps(
            _chat(
                _user(),
                {"role": "assistant", "tool_calls": [_call()]},
                {"role": "tool", "tool_call_id": "call_9", "content": "12C"},
                _assistant(),
            )
        ).encode(),
        {},
        ErrorCode.BAD_TOOL_CALL,
        "messages[2].tool_call_id",
    ),
    (
        "tool_call_id_twice",
        json.dumps(
            _chat(
                _user(),
                {"role": "assistant", "tool_calls": [_call(), _call()]},
                {"role": "tool", "tool_call_id": "call_1", "content": "12C"},
                _assistant(),
            )
        ).encode(),
        {},
        ErrorCode.BAD_TOOL_CALL,
        "messages[1].tool_calls[1].id",
    ),
    (
        "tool_not_declared",
        json.dumps(
            _chat(
                _user(),
                {"role": "assistant", "tool_calls": [_call(name="stocks")]},
                {"role": "tool", "tool_call_id": "call_1", "content": "12"},
                _assistant(),
                tools=[{"type": "function", "function": {"name": "weather", "parameters": {}}}],
            )
        ).encode(),
        {},
        ErrorCode.BAD_TOOL_CALL,
        "messages[1].tool_calls[0].function.name",
    ),
    (
        "tools_malformed",
        json.dumps(_chat(_user(), _assistant(), tools=[{"type": "function"}])).encode(),
        {},
        ErrorCode.BAD_TOOL_CALL,
        "tools[0]",
    ),
]


@pytest.mark.parametrize(
    ("line", "overrides", "code", "field"),
    [pytest.param(*case[1:], id=case[0]) for case in JSONL_CASES],
)
def test_jsonl_error_is_reported_at_its_line_and_field(
    line: bytes, overrides: dict, code: ErrorCode, field: str
) -> None:
    data = json.dumps(GOOD).encode() + b"\n\n" + line + b"\n" + json.dumps(GOOD).encode() + b"\n"
    config = IntakeConfig(policy="drop_invalid", **overrides)
    result = validate_upload(data, config)
    assert [(e.row, e.field, e.code) for e in result.errors] == [(3, field, code)]
    assert result.rows_total == 3 and result.rows_invalid == 1


def test_a_valid_tool_conversation_passes() -> None:
    row = _chat(
        {"role": "system", "content": "You can call tools."},
        _user(),
        {"role": "assistant", "content": None, "tool_calls": [_call()]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 12}'},
        _assistant("12 degrees in Oslo."),
        tools=[
            {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
        ],
    )
    result = validate_upload(json.dumps(row).encode())
    assert result.accepted, result.errors
    assert result.stats.role_counts == {"system": 1, "user": 1, "assistant": 2, "tool": 1}


def test_csv_errors_carry_the_data_row_number() -> None:
    data = (
        "messages,notes\n"
        '"[{""role"":""user"",""content"":""a""},\n{""role"":""assistant"",""content"":""c""}]",x\n'  # row 1: two lines
        '"[{""role"":""user""",x\n'  # row 2: bad JSON in the cell
        "\n"  # blank: not a row
        "a,b,c\n"  # row 3: three cells, header has two
        '"[{""role"":""user"",""content"":""q""},{""role"":""assistant"",""content"":""\xff""}]",y\n'
    ).encode("latin-1")
    result = validate_upload(data, IntakeConfig(format="csv", schema="chat", policy="drop_invalid"))
    found = [(e.row, e.field, e.code) for e in result.errors]
    assert found == [
        (2, "messages", ErrorCode.BAD_JSON),
        (3, "", ErrorCode.BAD_CSV),
        (4, "messages", ErrorCode.BAD_ENCODING),
    ]
    assert result.rows_stored == 1


def test_csv_unclosed_quote_is_bad_csv() -> None:
    data = b'instruction,response\nhi,there\n"open,quote\n'
    result = validate_upload(data, IntakeConfig(format="csv", policy="drop_invalid"))
    assert [(e.row, e.code) for e in result.errors] == [(2, ErrorCode.BAD_CSV)]


def test_csv_without_the_needed_column_is_a_file_error() -> None:
    result = validate_upload(b"prompt,answer\nhi,there\n", IntakeConfig(format="csv"))
    assert not result.accepted
    assert [(e.row, e.field, e.code) for e in result.errors] == [
        (0, "instruction", ErrorCode.MISSING_FIELD),
        (0, "response", ErrorCode.MISSING_FIELD),
    ]


def test_parquet_garbage_is_bad_file() -> None:
    result = validate_upload(b"PAR1 but not really", IntakeConfig(format="parquet"))
    assert not result.accepted
    assert [(e.row, e.code) for e in result.errors] == [(0, ErrorCode.BAD_FILE)]


def test_parquet_errors_use_row_index_plus_one() -> None:
    table = pa.table(
        {
            "instruction": ["a", "b", "c", "d", "e"],
            "response": ["1", "2", None, "4", b"\xff".decode("latin-1")],
            "output": [None, None, None, None, None],
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=2)
    config = IntakeConfig(format="parquet", policy="drop_invalid", parquet_batch_rows=2)
    result = validate_upload(sink.getvalue(), config)
    assert [(e.row, e.field, e.code) for e in result.errors] == [
        (3, "response", ErrorCode.MISSING_FIELD)
    ]
    assert result.rows_stored == 4


def test_parquet_binary_column_with_bad_utf8() -> None:
    table = pa.table(
        {"instruction": pa.array([b"ok", b"\xffbad"], pa.binary()), "response": ["x", "y"]}
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    result = validate_upload(sink.getvalue(), IntakeConfig(format="parquet", policy="drop_invalid"))
    assert [(e.row, e.field, e.code) for e in result.errors] == [
        (2, "instruction", ErrorCode.BAD_ENCODING)
    ]


@pytest.mark.parametrize("data", [b"", b"\n  \n"])
def test_empty_upload_is_no_rows(data: bytes) -> None:
    result = validate_upload(data)
    assert not result.accepted
    assert [(e.row, e.code) for e in result.errors] == [(0, ErrorCode.NO_ROWS)]


def test_every_error_code_is_exercised() -> None:
    exercised = {case[3] for case in JSONL_CASES} | {
        ErrorCode.BAD_CSV,
        ErrorCode.BAD_FILE,
        ErrorCode.NO_ROWS,
    }
    assert exercised == set(ErrorCode)


def test_huge_line_is_reported_without_holding_it() -> None:
    """A 64 MiB line arrives in 1 MiB chunks; it is skipped, and the next line still read."""
    good = json.dumps(GOOD).encode()

    def chunks():
        yield good + b"\n" + b'{"messages": "'
        for _ in range(64):
            yield b"x" * (1 << 20)
        yield b'"}\n' + good.replace(b"Hi", b"Hey") + b"\n"

    import tracemalloc

    tracemalloc.start()
    result = validate_upload(chunks(), IntakeConfig(policy="drop_invalid"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [(e.row, e.code) for e in result.errors] == [(2, ErrorCode.ROW_TOO_LONG)]
    assert result.rows_stored == 2
    assert peak < 24 << 20  # the default cap is 8 MiB; the line is 64 MiB


def test_problems_per_row_are_capped() -> None:
    row = _chat(*({"role": "bot", "content": "x"} for _ in range(50)), _assistant())
    config = IntakeConfig(policy="drop_invalid", max_problems_per_row=5)
    result = validate_upload(json.dumps(row).encode() + b"\n" + json.dumps(GOOD).encode(), config)
    assert len(result.errors) == 5 and {e.row for e in result.errors} == {1}
