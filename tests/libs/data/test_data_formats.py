"""JSONL, CSV and Parquet of the same content normalise to the same stored rows and the
same version id; instruction rows store as the equivalent chat rows."""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.data import IntakeConfig, validate_upload
from posttrain.data.readers import iter_lines

CHATS = [
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of Norway?"},
        {"role": "assistant", "content": "Oslo."},
    ],
    [
        {"role": "user", "content": "Weather in Oslo, in °C?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo", "unit": "C"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "12"},
        {"role": "assistant", "content": '12 °C, with a "chance" of rain,\nlater.'},
    ],
    [
        {"role": "user", "content": "Übersetze: 猫"},
        {"role": "assistant", "content": "Katze"},
    ],
]

INSTRUCTIONS = [
    {"instruction": "Capital of Norway?", "input": "", "output": "Oslo.", "system": "Be brief."},
    {"instruction": "Add the numbers.", "input": "2, 2", "output": "4", "system": ""},
    {"instruction": "Say hi.", "input": "   ", "output": "Hi!", "system": None},
]

CHAT_EQUIVALENT = [
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of Norway?"},
        {"role": "assistant", "content": "Oslo."},
    ],
    [
        {"role": "user", "content": "Add the numbers.\n\n2, 2"},
        {"role": "assistant", "content": "4"},
    ],
    [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
]


def _jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)


def _csv(rows: list[dict], columns: list[str]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {c: json.dumps(row[c]) if isinstance(row.get(c), list) else row.get(c) for c in columns}
        )
    return out.getvalue().encode("utf-8")


def _parquet(table: pa.Table, row_group_size: int = 2) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=row_group_size)
    return sink.getvalue()


def _run(data: object, **config: object) -> tuple[str, bytes]:
    sink = io.BytesIO()
    result = validate_upload(data, IntakeConfig(parquet_batch_rows=2, **config), sink)  # type: ignore[arg-type]
    assert result.accepted, result.errors
    return result.version, sink.getvalue()


def test_chat_in_every_format_stores_the_same_rows() -> None:
    rows = [{"messages": m} for m in CHATS]
    expected = _run(_jsonl(rows), format="jsonl", schema="chat")
    assert _run(_csv(rows, ["messages"]), format="csv", schema="chat") == expected
    as_text = pa.table({"messages": [json.dumps(m) for m in CHATS]})
    assert _run(_parquet(as_text), format="parquet", schema="chat") == expected
    # The Hugging Face datasets layout: messages as list<struct>, absent keys as nulls.
    as_structs = pa.Table.from_pylist(rows)
    assert _run(_parquet(as_structs), format="parquet", schema="auto") == expected


def test_instruction_in_every_format_matches_the_chat_form() -> None:
    expected = _run(_jsonl([{"messages": m} for m in CHAT_EQUIVALENT]), schema="chat")
    columns = ["instruction", "input", "output", "system"]
    assert _run(_jsonl(INSTRUCTIONS), schema="instruction") == expected
    assert _run(_csv(INSTRUCTIONS, columns), format="csv", schema="instruction") == expected
    table = pa.Table.from_pylist(INSTRUCTIONS)
    assert _run(_parquet(table), format="parquet", schema="instruction") == expected


def test_stored_rows_are_canonical_json() -> None:
    _, stored = _run(_jsonl([{"messages": m} for m in CHATS]))
    lines = stored.decode("utf-8").splitlines()
    assert len(lines) == 3
    for line in lines:
        obj = json.loads(line)
        assert line == json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    call = json.loads(lines[1])["messages"][1]
    assert call == {
        "content": "",
        "role": "assistant",
        "tool_calls": [
            {
                "function": {"arguments": {"city": "Oslo", "unit": "C"}, "name": "weather"},
                "id": "call_1",
                "type": "function",
            }
        ],
    }
    assert "猫" in lines[2]  # stored as UTF-8, not \\u escapes


def test_formatting_differences_do_not_change_the_version() -> None:
    """Key order, whitespace, argument-string spacing, extra keys and null optionals."""
    plain = [{"messages": CHATS[1]}]
    messy = [
        {
            "id": 17,
            "source": "crm",
            "messages": [
                {"content": CHATS[1][0]["content"], "role": "user", "name": None},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "type": "function",
                            "id": "call_1",
                            "function": {
                                "arguments": '{ "unit":"C",  "city":"Oslo" }',
                                "name": "weather",
                            },
                        }
                    ],
                },
                {"role": "tool", "content": "12", "tool_call_id": "call_1", "weight": 1},
                {"role": "assistant", "content": CHATS[1][3]["content"]},
            ],
        }
    ]
    indented = b"\n".join(
        json.dumps(r, indent=None, separators=(" , ", " : ")).encode() for r in messy
    )
    assert _run(_jsonl(plain)) == _run(indented + b"\r\n")


def test_parquet_from_a_stream_of_chunks() -> None:
    data = _parquet(pa.Table.from_pylist(INSTRUCTIONS))
    chunks = (data[i : i + 100] for i in range(0, len(data), 100))
    assert _run(chunks, format="parquet") == _run(data, format="parquet")


def test_jsonl_with_bom_and_crlf() -> None:
    rows = [{"messages": m} for m in CHATS]
    data = b"\xef\xbb\xbf" + _jsonl(rows).replace(b"\n", b"\r\n")
    assert _run(data) == _run(_jsonl(rows))


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_jsonl_chunk_boundaries_do_not_matter(chunk: int) -> None:
    data = _jsonl([{"messages": m} for m in CHATS])
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    assert _run(iter(chunks)) == _run(data)


def test_csv_with_utf8_bom_and_extra_columns() -> None:
    rows = [{**row, "id": i, "notes": "reviewed"} for i, row in enumerate(INSTRUCTIONS)]
    columns = ["id", "instruction", "input", "output", "system", "notes"]
    data = b"\xef\xbb\xbf" + _csv(rows, columns)
    assert _run(data, format="csv") == _run(_jsonl(INSTRUCTIONS))


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300).map(lambda b: b.replace(b"\x00", b"\n")),
    st.lists(st.integers(1, 40), min_size=1, max_size=10),
    st.integers(1, 30),
)
def test_line_splitting_is_independent_of_chunking(data: bytes, sizes: list[int], cap: int) -> None:
    chunks, at = [], 0
    while at < len(data):
        size = sizes[len(chunks) % len(sizes)]
        chunks.append(data[at : at + size])
        at += size
    parts = data.split(b"\n")
    if not parts[-1]:
        parts.pop()
    expected = [p if len(p) <= cap else None for p in parts]
    assert list(iter_lines(iter(chunks), cap)) == expected
