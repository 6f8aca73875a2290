"""What can be wrong with an uploaded row, said with a row number, a field path and a code.

Every finding of the intake library (a row error, a PII finding, a file-level problem) is
one `Violation`. The codes are the machine-readable contract that clients switch on; the
message is for people. A violation never carries a PII value itself, only a masked one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from posttrain.v1 import common_pb2


class ErrorCode(StrEnum):
    """Why a row (or the whole file, row 0) was not accepted."""

    BAD_ENCODING = "bad_encoding"  # invalid UTF-8 bytes, or a lone surrogate in a string
    BAD_JSON = "bad_json"  # the row (or a JSON-valued column) does not parse
    BAD_CSV = "bad_csv"  # a malformed CSV record (quoting, more cells than the header)
    BAD_FILE = "bad_file"  # the file as a whole cannot be read (row 0)
    NO_ROWS = "no_rows"  # nothing to store: an empty file, or every row dropped (row 0)
    ROW_TOO_LONG = "row_too_long"  # a line/record above IntakeConfig.max_row_bytes
    TOO_DEEP = "too_deep"  # JSON nested deeper than IntakeConfig.max_json_depth
    MISSING_FIELD = "missing_field"  # a required field is absent, null or empty text
    WRONG_TYPE = "wrong_type"  # a field (or the row itself) has the wrong JSON type
    UNKNOWN_ROLE = "unknown_role"  # a message role outside system/user/assistant/tool
    EMPTY_CONVERSATION = "empty_conversation"  # `messages` is an empty list
    LAST_TURN_NOT_ASSISTANT = "last_turn_not_assistant"  # nothing to learn at the end
    EMPTY_ANSWER = "empty_answer"  # an assistant turn with blank text and no tool call
    BAD_TOOL_CALL = "bad_tool_call"  # tool call shape, ids, or tool-message linkage
    TOO_MANY_TOKENS = "too_many_tokens"  # above IntakeConfig.max_tokens_per_row


@dataclass(frozen=True, slots=True)
class Violation:
    """One finding about one place in the upload.

    row: 1-based row as in the file (JSONL line number, CSV data-row number, Parquet row
    index + 1); 0 when about the whole file. field: dotted path in the *uploaded* shape,
    e.g. "messages[2].role" or "response"; "" for the whole row.
    """

    row: int
    field: str
    code: str
    message: str

    def to_proto(self) -> common_pb2.FieldViolation:
        return common_pb2.FieldViolation(
            row=self.row, field=self.field, code=str(self.code), message=self.message
        )


@dataclass(frozen=True, slots=True)
class Problem:
    """A violation before the pipeline knows its row number (what parsers and checks return)."""

    field: str
    code: str
    message: str

    def at(self, row: int) -> Violation:
        return Violation(row=row, field=self.field, code=self.code, message=self.message)
