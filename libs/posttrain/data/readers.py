"""Streaming readers: upload bytes in, one raw row (a dict, or what is wrong) at a time.

A reader takes a binary file object, an iterable of byte chunks (e.g. the chunks of a
gRPC upload stream) or a bytes object, and never holds more than one row, one read chunk
(1 MiB) and, for Parquet, one record batch in memory. Row numbers are 1-based as a person
sees the file: JSONL line number (blank lines are skipped but counted), CSV data-record
number after the header (blank records skipped, not counted), Parquet row index + 1.
Row 0 is the file itself (an unreadable file, a missing column): reading stops there.

Hostile input: a line longer than max_row_bytes is skipped to its end without being held
and reported as row_too_long; invalid UTF-8 is bad_encoding for that row (CSV: that
cell); JSON deeper than max_json_depth (or deep enough to exhaust recursion) is too_deep.
Adding a format is one reader function and one line in READERS.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from posttrain.data.canonical import is_valid_unicode, json_type, load_json
from posttrain.data.config import DataFormat, IntakeConfig, RowSchema
from posttrain.data.schemas import JSON_COLUMNS, KNOWN_COLUMNS, REQUIRED_COLUMNS
from posttrain.data.violations import ErrorCode, Problem

ByteSource = IO[bytes] | Iterable[bytes] | bytes
CHUNK_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"


@dataclass(slots=True)
class RawRow:
    """One row as read: `value` is the row's fields, or None when `problems` says why not."""

    row: int
    value: dict[str, Any] | None
    problems: list[Problem] = field(default_factory=list)


def iter_chunks(source: ByteSource, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        yield bytes(source)
        return
    read = getattr(source, "read", None)
    if read is not None:
        while chunk := read(chunk_bytes):
            yield chunk
        return
    for chunk in source:  # type: ignore[union-attr]
        yield bytes(chunk)


def iter_lines(chunks: Iterable[bytes], max_bytes: int) -> Iterator[bytes | None]:
    """Lines without their b"\\n"; None in place of a line longer than max_bytes, whose
    bytes are dropped as they arrive rather than collected."""
    pending = bytearray()
    overflow = False
    for chunk in chunks:
        if not chunk:
            continue
        parts = chunk.split(b"\n")
        if len(parts) == 1:  # no line ends in this chunk
            if not overflow:
                pending += chunk
                if len(pending) > max_bytes:
                    overflow = True
                    pending.clear()
            continue
        first = parts[0]
        if overflow or len(pending) + len(first) > max_bytes:
            yield None
        else:
            pending += first
            yield bytes(pending)
        pending.clear()
        overflow = False
        for part in parts[1:-1]:
            yield part if len(part) <= max_bytes else None
        last = parts[-1]
        if len(last) > max_bytes:
            overflow = True
        else:
            pending += last
    if overflow:
        yield None
    elif pending:
        yield bytes(pending)


def _too_long(row: int, config: IntakeConfig) -> RawRow:
    message = f"row is longer than {config.max_row_bytes} bytes (max_row_bytes)"
    return RawRow(row, None, [Problem("", ErrorCode.ROW_TOO_LONG, message)])


def _bad_encoding(row: int, column: str, error: UnicodeDecodeError) -> RawRow:
    message = (
        f"invalid UTF-8 at byte {error.start}: {error.object[error.start : error.start + 4]!r}"
    )
    return RawRow(row, None, [Problem(column, ErrorCode.BAD_ENCODING, message)])


def read_jsonl(source: ByteSource, config: IntakeConfig) -> Iterator[RawRow]:
    for number, line in enumerate(iter_lines(iter_chunks(source), config.max_row_bytes), 1):
        if line is None:
            yield _too_long(number, config)
            continue
        if number == 1 and line.startswith(_BOM):
            line = line[3:]
        if not line or line.isspace():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield _bad_encoding(number, "", exc)
            continue
        value, problem = load_json(text, config.max_json_depth)
        if problem is not None:
            yield RawRow(number, None, [problem])
        elif not isinstance(value, dict):
            message = f"a row must be a JSON object, got {json_type(value)}"
            yield RawRow(number, None, [Problem("", ErrorCode.WRONG_TYPE, message)])
        else:
            yield RawRow(number, value, [])


def _missing_columns(columns: Iterable[str], schema: RowSchema) -> list[Problem]:
    have = set(columns)
    if schema is RowSchema.AUTO:
        schema = RowSchema.CHAT if "messages" in have else RowSchema.INSTRUCTION
    problems = []
    for names in REQUIRED_COLUMNS[schema]:
        if not have.intersection(names):
            wanted = " or ".join(names)
            message = f"the file has no {wanted} column, which the {schema} schema needs"
            problems.append(Problem(names[0], ErrorCode.MISSING_FIELD, message))
    return problems


def _decode_json_cells(values: dict[str, Any], config: IntakeConfig) -> list[Problem]:
    """Parses JSON-valued columns (messages, tools) given as text, in place."""
    problems = []
    for column in JSON_COLUMNS:
        cell = values.get(column)
        if isinstance(cell, str):
            if not cell.strip():
                values[column] = None
                continue
            parsed, problem = load_json(cell, config.max_json_depth, column)
            if problem is not None:
                problems.append(problem)
            values[column] = parsed
    return problems


class _CsvLines:
    """Feeds csv.reader decoded physical lines and stops it, by raising, when a record
    grows past max_row_bytes. Undecodable bytes become lone surrogates (surrogateescape)
    so the cell holding them can be named."""

    class RecordTooLong(Exception):
        pass

    def __init__(self, source: ByteSource, max_bytes: int) -> None:
        self._lines = iter_lines(iter_chunks(source), max_bytes)
        self.max_bytes = max_bytes
        self.record_bytes = 0
        self._first = True

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        if line is None:
            raise self.RecordTooLong
        if self._first:
            self._first = False
            line = line.removeprefix(_BOM)
        self.record_bytes += len(line) + 1
        if self.record_bytes > self.max_bytes:
            raise self.RecordTooLong
        return line.decode("utf-8", "surrogateescape") + "\n"


def read_csv(source: ByteSource, config: IntakeConfig) -> Iterator[RawRow]:
    # The csv module's per-cell limit is process-wide; only ever raise it, to our cap.
    if csv.field_size_limit() < config.max_row_bytes:
        csv.field_size_limit(config.max_row_bytes)
    lines = _CsvLines(source, config.max_row_bytes)
    reader = csv.reader(lines, strict=True)
    header: list[str] | None = None
    number = 0
    while True:
        lines.record_bytes = 0
        try:
            cells = next(reader)
        except StopIteration:
            break
        except (_CsvLines.RecordTooLong, csv.Error) as exc:
            if header is None:
                problem = Problem("", ErrorCode.BAD_CSV, f"the header row is unreadable: {exc}")
                yield RawRow(0, None, [problem])
                return
            number += 1
            if isinstance(exc, _CsvLines.RecordTooLong):
                yield _too_long(number, config)
            else:
                yield RawRow(number, None, [Problem("", ErrorCode.BAD_CSV, str(exc))])
            continue
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue
        if header is None:
            header = [c.strip() for c in cells]
            if not all(map(is_valid_unicode, header)):
                problem = Problem("", ErrorCode.BAD_ENCODING, "the header row is not valid UTF-8")
                yield RawRow(0, None, [problem])
                return
            if len(set(header)) != len(header):
                problem = Problem("", ErrorCode.BAD_CSV, "the header row repeats a column name")
                yield RawRow(0, None, [problem])
                return
            if missing := _missing_columns(header, config.schema):
                yield RawRow(0, None, missing)
                return
            continue
        number += 1
        if len(cells) > len(header):
            message = f"record has {len(cells)} cells, the header has {len(header)}"
            yield RawRow(number, None, [Problem("", ErrorCode.BAD_CSV, message)])
            continue
        problems = [
            Problem(name, ErrorCode.BAD_ENCODING, "cell is not valid UTF-8")
            for name, cell in zip(header, cells, strict=False)
            if name in KNOWN_COLUMNS and not is_valid_unicode(cell)
        ]
        if problems:
            yield RawRow(number, None, problems)
            continue
        values: dict[str, Any] = dict(zip(header, cells, strict=False))
        problems = _decode_json_cells(values, config)
        yield RawRow(number, None if problems else values, problems)


def _seekable(source: ByteSource) -> tuple[IO[bytes], bool]:
    """Parquet's footer is at the end: a stream is spooled to a temporary file (disk, not
    memory). Returns the file and whether this function opened it."""
    if hasattr(source, "seek") and getattr(source, "seekable", lambda: False)():
        return source, False  # type: ignore[return-value]
    spool = tempfile.TemporaryFile()
    for chunk in iter_chunks(source):
        spool.write(chunk)
    spool.seek(0)
    return spool, True


def _parquet_cell(value: Any, column: str, problems: list[Problem]) -> Any:
    if isinstance(value, bytes):  # a binary column: decode here to name the cell
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            message = f"invalid UTF-8 at byte {exc.start}"
            problems.append(Problem(column, ErrorCode.BAD_ENCODING, message))
            return None
    return value


def read_parquet(source: ByteSource, config: IntakeConfig) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    file, opened = _seekable(source)
    number = 0
    try:
        try:
            parquet = pq.ParquetFile(file)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad files
            yield RawRow(0, None, [Problem("", ErrorCode.BAD_FILE, f"not a Parquet file: {exc}")])
            return
        names = parquet.schema_arrow.names
        if missing := _missing_columns(names, config.schema):
            yield RawRow(0, None, missing)
            return
        columns = [name for name in names if name in KNOWN_COLUMNS]
        batches = parquet.iter_batches(batch_size=config.parquet_batch_rows, columns=columns)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - a corrupt page ends the file
                message = f"unreadable after row {number}: {exc}"
                yield RawRow(0, None, [Problem("", ErrorCode.BAD_FILE, message)])
                return
            for record in batch.to_pylist():
                number += 1
                problems: list[Problem] = []
                values = {k: _parquet_cell(v, k, problems) for k, v in record.items()}
                if not problems:
                    problems = _decode_json_cells(values, config)
                yield RawRow(number, None if problems else values, problems)
    finally:
        if opened:
            file.close()


Reader = Callable[[ByteSource, IntakeConfig], Iterator[RawRow]]
READERS: dict[DataFormat, Reader] = {
    DataFormat.JSONL: read_jsonl,
    DataFormat.CSV: read_csv,
    DataFormat.PARQUET: read_parquet,
}
