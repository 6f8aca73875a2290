"""The validation pass as a whole: policies, the report, stats, token counting, the check
registry, bounded memory on a large stream, and garbage that must never crash it."""

from __future__ import annotations

import io
import json
import random
import string
import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posttrain.data import (
    ROW_CHECKS,
    ApproxTokenCounter,
    ErrorCode,
    HFTokenCounter,
    IntakeConfig,
    validate_upload,
)
from posttrain.data.schemas import ChatRow
from posttrain.data.violations import Problem
from posttrain.v1 import intake_pb2


def _row(i: int, answer: str | None = None) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"Question {i}?"},
            {"role": "assistant", "content": answer if answer is not None else f"Answer {i}."},
        ]
    }


def _jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


MIXED = _jsonl([_row(1), _row(2, ""), _row(3), {"messages": "x"}, _row(4)])


def test_reject_policy_rejects_and_lists_every_error() -> None:
    sink = io.BytesIO()
    result = validate_upload(MIXED, IntakeConfig(policy="reject_upload"), sink)
    assert not result.accepted and result.version == "" and result.rows_stored == 0
    assert [(e.row, e.code) for e in result.errors] == [
        (2, ErrorCode.EMPTY_ANSWER),
        (4, ErrorCode.WRONG_TYPE),
    ]
    assert result.rows_valid == 3 and result.rows_invalid == 2
    assert result.split.eval_rows == result.split.train_rows == 0
    assert result.stats.rows == 3  # stats still describe every valid row
    assert sink.getvalue().count(b"\n") == 1  # storing stopped at the first bad row


def test_drop_policy_keeps_valid_rows_and_records_dropped_ones() -> None:
    sink = io.BytesIO()
    result = validate_upload(MIXED, IntakeConfig(policy="drop_invalid"), sink)
    assert result.accepted and result.version
    assert result.rows_stored == 3 and result.rows_invalid == 2
    assert [(e.row, e.code) for e in result.errors] == [
        (2, ErrorCode.EMPTY_ANSWER),
        (4, ErrorCode.WRONG_TYPE),
    ]
    assert [json.loads(line) for line in sink.getvalue().splitlines()] == [
        _row(1),
        _row(3),
        _row(4),
    ]


def test_drop_policy_with_nothing_left_is_not_accepted() -> None:
    result = validate_upload(_jsonl([_row(1, "")]), IntakeConfig(policy="drop_invalid"))
    assert not result.accepted
    assert [(e.row, e.code) for e in result.errors][0] == (0, ErrorCode.NO_ROWS)


def test_errors_are_capped_with_an_exact_total_and_a_truncation_marker() -> None:
    rows = [_row(i, "") for i in range(30)] + [_row(99)]
    result = validate_upload(_jsonl(rows), IntakeConfig(max_reported=10))
    assert len(result.errors) == 10 and result.errors_total == 30
    assert result.error_counts == {"empty_answer": 30}
    report = result.to_proto("support-chats")
    assert len(report.errors) == 11
    assert report.errors[-1].code == "truncated" and "20 more errors" in report.errors[-1].message


def test_report_proto() -> None:
    data = _jsonl([_row(1), _row(1), _row(2, ""), _row(3, "mail a@example.com")])
    result = validate_upload(data, IntakeConfig(policy="drop_invalid"))
    report = result.to_proto("support-chats")
    assert isinstance(report, intake_pb2.ValidationReport)
    assert report.dataset == "support-chats" and report.version == result.version
    assert (report.rows_total, report.rows_valid, report.rows_dropped) == (4, 3, 1)
    assert report.duplicates_removed == 1
    assert [(e.row, e.field, e.code) for e in report.errors] == [
        (3, "messages[1].content", "empty_answer")
    ]
    assert [(f.row, f.field, f.code) for f in report.pii_findings] == [
        (4, "messages[1].content", "pii_email")
    ]
    assert report.role_counts["user"] == 2 and report.role_counts["assistant"] == 2
    assert sum(report.length_histogram.values()) == 2
    assert report.tokens_total == result.stats.tokens_total > 0
    assert intake_pb2.ValidationReport.FromString(report.SerializeToString()) == report


def test_stats_with_the_approximate_counter() -> None:
    rows = [
        {"messages": [{"role": "system", "content": "s" * 40}, *_row(1)["messages"]]},
        _row(2, "x" * 4000),
    ]
    result = validate_upload(_jsonl(rows), IntakeConfig(per_message_overhead_tokens=4))
    counter = ApproxTokenCounter()
    first = (
        3 * 4 + counter.count("s" * 40) + counter.count("Question 1?") + counter.count("Answer 1.")
    )
    second = 2 * 4 + counter.count("Question 2?") + 1000
    assert (result.stats.tokens_total, result.stats.tokens_max) == (first + second, second)
    assert second == 1011
    assert result.stats.length_histogram["0-127"] == 1
    assert result.stats.length_histogram["512-1023"] == 1
    assert sum(result.stats.length_histogram.values()) == 2
    assert result.stats.role_counts == {"system": 1, "user": 2, "assistant": 2, "tool": 0}
    assert result.stats.token_counter == "approx:utf8_bytes/4"


def test_approx_counter_counts_bytes() -> None:
    counter = ApproxTokenCounter()
    assert counter.count("") == 0 and counter.count("abcd") == 1 and counter.count("abcde") == 2
    assert counter.count("猫猫猫猫") == 3  # 12 UTF-8 bytes


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]"])
    tokenizer.train_from_iterator(["question answer one two three"], trainer)
    return tokenizer


def test_a_real_tokenizer_sets_budgets_and_totals(tmp_path) -> None:
    tokenizer = _tiny_tokenizer()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    counter = HFTokenCounter.from_pretrained(tmp_path)
    assert counter.count("question one two ?") == 4
    rows = [
        {
            "messages": [
                {"role": "user", "content": "one two"},
                {"role": "assistant", "content": "three"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "one " * 30},
                {"role": "assistant", "content": "two"},
            ]
        },
    ]
    config = IntakeConfig(
        policy="drop_invalid", max_tokens_per_row=20, per_message_overhead_tokens=0
    )
    result = validate_upload(_jsonl(rows), config, token_counter=counter)
    assert [(e.row, e.code) for e in result.errors] == [(2, ErrorCode.TOO_MANY_TOKENS)]
    assert result.stats.tokens_total == 3
    assert result.stats.token_counter == f"hf:{tmp_path.name}"


def test_checks_are_registered_units(monkeypatch: pytest.MonkeyPatch) -> None:
    assert list(ROW_CHECKS) == [
        "known_roles",
        "ends_with_assistant",
        "answers_not_empty",
        "tool_calls",
        "token_budget",
    ]

    def no_shouting(row: ChatRow, config: IntakeConfig) -> Iterator[Problem]:
        for i, message in enumerate(row.messages):
            if message["content"].isupper():
                yield Problem(f"messages[{i}].content", "shouting", "all capitals")

    monkeypatch.setitem(ROW_CHECKS, "no_shouting", no_shouting)
    data = _jsonl([_row(1, "YES!"), _row(2, ""), _row(3)])
    result = validate_upload(data, IntakeConfig(policy="drop_invalid"))
    assert [(e.row, e.code) for e in result.errors] == [(1, "shouting"), (2, "empty_answer")]
    config = IntakeConfig(
        policy="drop_invalid", disabled_checks=("no_shouting", "answers_not_empty")
    )
    assert validate_upload(data, config).errors == []


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        IntakeConfig(eval_fraction=1.5)
    with pytest.raises(ValueError):
        IntakeConfig(format="xml")
    assert IntakeConfig(format="csv", policy="drop_invalid").format == "csv"


def test_config_from_proto_enums() -> None:
    from posttrain.data import DataFormat, InvalidRowPolicy, RowSchema

    assert DataFormat.from_proto(intake_pb2.DATA_FORMAT_PARQUET) is DataFormat.PARQUET
    assert RowSchema.from_proto(intake_pb2.ROW_SCHEMA_UNSPECIFIED) is RowSchema.AUTO
    assert InvalidRowPolicy.from_proto(0) is InvalidRowPolicy.REJECT_UPLOAD
    with pytest.raises(ValueError):
        DataFormat.from_proto(intake_pb2.DATA_FORMAT_UNSPECIFIED)


# ---------------------------------------------------------------- streaming


def _big_upload(target_bytes: int) -> Iterator[bytes]:
    """Distinct chat rows of ~2 KB, yielded as 1 MiB chunks, never all in memory."""
    rng = random.Random(5)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(3000)]
    produced = 0
    buffer: list[bytes] = []
    size = 0
    i = 0
    while produced < target_bytes:
        line = (
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": " ".join(rng.choices(words, k=40))},
                        {"role": "assistant", "content": " ".join(rng.choices(words, k=300))},
                    ],
                    "id": i,
                }
            ).encode()
            + b"\n"
        )
        i += 1
        buffer.append(line)
        size += len(line)
        produced += len(line)
        if size >= 1 << 20:
            yield b"".join(buffer)
            buffer, size = [], 0
    yield b"".join(buffer)


class _NullSink:
    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)


@pytest.mark.slow
def test_a_50_mb_upload_streams_in_bounded_memory() -> None:
    target = 50 * 1024 * 1024
    sink = _NullSink()
    tracemalloc.start()
    result = validate_upload(_big_upload(target), IntakeConfig(schema="chat"), sink)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.accepted and result.rows_stored == result.rows_total > 20_000
    assert sink.size > 40 * 1024 * 1024
    # A few MiB of read/write buffers plus ~200 bytes of state a row (hash, row number,
    # token and role counts); the upload itself is never held.
    assert peak < 6e6 + 250 * result.rows_total, f"peak {peak / 1e6:.1f} MB"
    assert peak < target / 4


# ---------------------------------------------------------------- hostile input

_LINES = st.lists(st.binary(max_size=200).map(lambda b: b.replace(b"\n", b" ")), max_size=20)

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "role",
                    "content",
                    "messages",
                    "tool_calls",
                    "id",
                    "function",
                    "name",
                    "arguments",
                    "tool_call_id",
                    "instruction",
                    "response",
                    "tools",
                    "type",
                ]
            )
            | st.text(max_size=5),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


def _row_lines(lines: list[bytes], max_row_bytes: int) -> list[int]:
    """Line numbers that are rows: too long, or not blank (a BOM on line 1 and a CR at
    the end do not count as content)."""
    rows = []
    for number, line in enumerate(lines, 1):
        if len(line) > max_row_bytes:
            rows.append(number)
            continue
        if number == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")
        line = line.removesuffix(b"\r")
        if line and not line.isspace():
            rows.append(number)
    return rows


def _check_every_row_is_accounted_for(data: bytes, lines: list[bytes]) -> None:
    config = IntakeConfig(policy="drop_invalid", max_reported=10_000, max_row_bytes=150)
    result = validate_upload(data, config)
    numbered = _row_lines(lines, config.max_row_bytes)
    error_rows = {e.row for e in result.errors if e.row}
    assert result.rows_total == len(numbered)
    assert error_rows <= set(numbered)
    assert len(error_rows) == result.rows_invalid
    assert result.rows_valid == result.rows_total - result.rows_invalid
    assert result.rows_stored + result.duplicates_removed == result.rows_valid
    assert all(e.code for e in result.errors)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_LINES)
def test_garbage_lines_never_crash(lines: list[bytes]) -> None:
    _check_every_row_is_accounted_for(b"\n".join(lines), lines)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_JSON, max_size=8))
def test_arbitrary_json_rows_never_crash(values: list) -> None:
    lines = [json.dumps(v).encode() for v in values]
    _check_every_row_is_accounted_for(b"\n".join(lines), lines)


_MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "tool", "system", "bot", None, 3]),
        "content": st.one_of(st.text(max_size=10), st.none(), st.integers()),
        "tool_call_id": st.one_of(st.sampled_from(["c1", "c2", ""]), st.none(), st.integers()),
        "tool_calls": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "id": st.one_of(st.sampled_from(["c1", "c2", ""]), st.none()),
                    "type": st.sampled_from(["function", "code"]),
                    "function": st.fixed_dictionaries(
                        {},
                        optional={
                            "name": st.text(max_size=3),
                            "arguments": st.one_of(
                                st.text(max_size=10),
                                st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
                                st.none(),
                            ),
                        },
                    ),
                },
            ),
            max_size=2,
        ),
    },
)
_CHAT_ROW = st.fixed_dictionaries(
    {},
    optional={
        "messages": st.lists(_MESSAGE, max_size=5),
        "tools": st.lists(
            st.dictionaries(st.sampled_from(["type", "function"]), _JSON), max_size=2
        ),
    },
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_CHAT_ROW, max_size=6))
def test_almost_chat_rows_never_crash(values: list) -> None:
    lines = [json.dumps(v).encode() for v in values]
    _check_every_row_is_accounted_for(b"\n".join(lines), lines)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_csv_and_parquet_never_crash(data: bytes) -> None:
    for fmt in ("csv", "parquet"):
        result = validate_upload(data, IntakeConfig(format=fmt, policy="drop_invalid"))
        assert result.accepted or result.errors
        assert all(e.row >= 0 and e.code for e in result.errors)
