"""Dataset files with hostile content through UploadDataset: a line over the row limit,
JSON nested past the depth limit, invalid UTF-8, a raw NUL byte, CSV sent as JSONL and
JSONL sent as CSV. Each is refused with INVALID_ARGUMENT naming the row (and the field
where there is one); no version, no row, no event and no object is left behind.
"""

from __future__ import annotations

import grpc
import pytest
import sqlalchemy as sa
from conftest import SAMPLE_ROWS, jsonl, rpc_error, upload_requests

from posttrain.data.config import IntakeConfig
from posttrain.intake.tables import DatasetRow
from posttrain.rpc.errors import field_violations
from posttrain.v1 import intake_pb2

GOOD = jsonl(SAMPLE_ROWS[:2])
MAX_ROW = IntakeConfig().max_row_bytes


def _chat_line(content: bytes) -> bytes:
    return (
        b'{"messages": [{"role": "user", "content": "' + content + b'"}, '
        b'{"role": "assistant", "content": "ok"}]}\n'
    )


CASES = {
    # name: (data, format, the 1-based row the error must name; 0: the file's header)
    "line over the row limit": (GOOD + _chat_line(b"x" * (MAX_ROW + 10)), "jsonl", 3),
    "JSON nested too deep": (
        GOOD + b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}\n",
        "jsonl",
        3,
    ),
    "invalid UTF-8": (GOOD + _chat_line(b"caf\xc3\x28 \xff\xfe"), "jsonl", 3),
    "raw NUL byte": (_chat_line(b"a\x00b") + GOOD, "jsonl", 1),
    "CSV sent as JSONL": (b"prompt,completion\nhello,there\n", "jsonl", 1),
    "JSONL sent as CSV": (GOOD, "csv", 0),  # no "messages" column in the header
}
FORMATS = {"jsonl": intake_pb2.DATA_FORMAT_JSONL, "csv": intake_pb2.DATA_FORMAT_CSV}


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_file_is_refused_naming_the_row_and_nothing_is_stored(intake, case):
    data, fmt, row = CASES[case]
    requests = upload_requests("hostile", data, fmt=FORMATS[fmt], chunk=1 << 20)
    err = rpc_error(lambda: intake.stub("alice").UploadDataset(requests))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    violations = field_violations(err)
    found = [(v.row, v.field, v.code) for v in violations]
    if row:
        assert any(v.row == row for v in violations), found
        assert f"row {row}" in err.details()
    else:
        assert any(v.field == "messages" for v in violations), found
    with intake.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(DatasetRow)) == 0
    assert intake.dataset_objects() == []
    assert [o.key for o in intake.store.list_objects("")] == []
    assert intake.outbox() == []


def test_a_byte_order_mark_is_not_part_of_the_first_row(intake):
    """Editors on Windows write one; it must neither fail row 1 nor change the version."""
    plain = intake.stub("alice").UploadDataset(upload_requests("bom", GOOD))
    with_bom = intake.stub("alice").UploadDataset(upload_requests("bom", b"\xef\xbb\xbf" + GOOD))
    assert with_bom.version.version == plain.version.version
    assert with_bom.already_existed
