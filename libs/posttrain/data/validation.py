"""One validation pass over an upload: read, parse, normalise, check, dedupe, scan for PII,
version and split, in a single stream. The library core of dataset intake.

    result = validate_upload(upload, config, sink)        # sink: normalised JSONL
    files = write_split(spooled_sink, result.split, train, eval, skip=result.near_duplicate_digests)
or both at once with run_intake(upload, config, train, eval).

validate_upload writes every valid, exactly-deduplicated row to `sink` in file order as
canonical JSONL, and returns the decisions that need the whole upload: which of those
rows are near-duplicates (left out of the version), the version id, the train/eval
split, statistics and the report. write_split then streams the sink into train.jsonl and
eval.jsonl. Two passes because near-duplicate choice and the small-dataset split rule
depend on every row, and both must not depend on row order.

Memory is independent of the upload's size except for ~200 bytes per unique row (its hash
in a dict and list, its row number, tokens and role counts) and the near-duplicate
signatures, which go to a temporary file (4 * near_dup_num_perm bytes a row).
This module knows nothing of gRPC, Kafka or object storage; the intake service wraps it.
"""

from __future__ import annotations

import tempfile
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import IO, Any

import numpy as np

from posttrain.data.canonical import canonical_json, is_valid_unicode, row_digest
from posttrain.data.checks import run_checks
from posttrain.data.config import IntakeConfig, InvalidRowPolicy
from posttrain.data.dedupe import NearDuplicateFinder
from posttrain.data.pii import scan_row
from posttrain.data.readers import READERS, ByteSource, RawRow
from posttrain.data.schemas import SCHEMAS, ChatRow
from posttrain.data.split import (
    SPLIT_RULE,
    DatasetSplit,
    JsonlWriter,
    SplitFiles,
    StoredFile,
    assign_split,
    write_split,
)
from posttrain.data.stats import DatasetStats, RowMeasures
from posttrain.data.tokens import ApproxTokenCounter, TokenCounter, count_row_tokens
from posttrain.data.version import VERSION_RULE, version_id
from posttrain.data.violations import ErrorCode, Problem, Violation
from posttrain.v1 import common_pb2, intake_pb2

ROW_FORMAT = "posttrain.chat.v1: canonical JSON lines of {messages, tools?}"


@dataclass(frozen=True, slots=True)
class DuplicateRow:
    row: int  # the row left out
    duplicate_of: int  # the row kept
    kind: str  # "exact" | "near"
    similarity: float  # 1.0 for exact; estimated Jaccard for near


@dataclass(frozen=True)
class ValidationResult:
    """Everything one pass decided. Row counts: rows_total = rows_invalid + rows_valid;
    rows_valid = exact_duplicates + near_duplicates + rows_stored."""

    config: IntakeConfig
    accepted: bool
    version: str  # "" when not accepted
    rows_total: int
    rows_invalid: int
    exact_duplicates: int
    near_duplicates: int
    rows_stored: int
    errors: list[Violation]  # file errors (row 0) first, then rows; capped
    errors_total: int
    error_counts: dict[str, int]
    pii_findings: list[Violation]  # capped; code pii_<kind>, masked value in message
    pii_total: int
    pii_counts: dict[str, int]
    duplicates: list[DuplicateRow]  # capped
    stats: DatasetStats
    split: DatasetSplit
    near_duplicate_digests: frozenset[bytes]  # in the normalised output, not in the version
    normalised: StoredFile  # what went to the sink (includes the near-duplicates)
    row_digests: list[bytes] = field(repr=False, default_factory=list)  # stored, file order
    files: SplitFiles | None = None  # set by run_intake

    @property
    def rows_valid(self) -> int:
        return self.rows_total - self.rows_invalid

    @property
    def duplicates_removed(self) -> int:
        return self.exact_duplicates + self.near_duplicates

    def to_proto(self, dataset: str = "") -> intake_pb2.ValidationReport:
        """The wire report. rows_dropped counts rows that failed validation (dropped under
        DROP_INVALID, the reason for rejection under REJECT_UPLOAD). When a list was
        capped, a last row-0 entry with code "truncated" says how many were left out."""
        errors = [v.to_proto() for v in self.errors]
        if self.errors_total > len(self.errors):
            errors.append(_truncated("errors", self.errors_total, len(self.errors)))
        pii = [v.to_proto() for v in self.pii_findings]
        if self.pii_total > len(self.pii_findings):
            pii.append(_truncated("PII findings", self.pii_total, len(self.pii_findings)))
        return intake_pb2.ValidationReport(
            dataset=dataset,
            version=self.version,
            rows_total=self.rows_total,
            rows_valid=self.rows_valid,
            rows_dropped=self.rows_invalid,
            duplicates_removed=self.duplicates_removed,
            errors=errors,
            pii_findings=pii,
            tokens_total=self.stats.tokens_total,
            role_counts=self.stats.role_counts,
            length_histogram=self.stats.length_histogram,
        )

    def manifest(self) -> dict[str, Any]:
        """The JSON-able description of a stored version: how to verify and reproduce it."""
        config = self.config
        manifest: dict[str, Any] = {
            "manifest_version": 1,
            "version": self.version,
            "version_rule": VERSION_RULE,
            "row_format": ROW_FORMAT,
            "rows": self.rows_stored,
            "train_rows": self.split.train_rows,
            "eval_rows": self.split.eval_rows,
            "split": {
                "rule": SPLIT_RULE,
                "seed": self.split.seed,
                "eval_fraction": self.split.eval_fraction,
            },
            "source": {
                "format": str(config.format),
                "schema": str(config.schema),
                "policy": str(config.policy),
                "rows_total": self.rows_total,
                "rows_invalid": self.rows_invalid,
            },
            "dedupe": {
                "exact_duplicates": self.exact_duplicates,
                "near_duplicates": self.near_duplicates,
                "near_dup_threshold": config.near_dup_threshold,
                "near_dup_num_perm": config.near_dup_num_perm,
                "near_dup_shingle_words": config.near_dup_shingle_words,
            },
            "pii_findings": {"total": self.pii_total, "by_kind": self.pii_counts},
            "stats": self.stats.to_dict(),
        }
        if self.files is not None:
            manifest["files"] = {
                name: {"rows": f.rows, "size_bytes": f.size_bytes, "sha256": f.sha256}
                for name, f in (("train.jsonl", self.files.train), ("eval.jsonl", self.files.eval))
            }
        return manifest


def _truncated(what: str, total: int, listed: int) -> common_pb2.FieldViolation:
    message = f"{total - listed} more {what} not listed (first {listed} of {total})"
    return common_pb2.FieldViolation(row=0, field="", code="truncated", message=message)


class _Findings:
    """Capped lists with exact totals."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.listed: list[Any] = []
        self.total = 0
        self.counts: Counter[str] = Counter()

    def add(self, item: Any, code: str) -> None:
        self.total += 1
        self.counts[code] += 1
        if len(self.listed) < self.cap:
            self.listed.append(item)


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, child in value.items():
            yield path, key
            yield from _strings(child, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _strings(child, f"{path}[{i}]")


def _invalid_text_field(row: ChatRow) -> str:
    """The uploaded field holding a lone surrogate (rare, so found after the fact)."""
    for path, text in row.texts:
        if not is_valid_unicode(text):
            return path
    for path, text in _strings(row.to_json(), ""):
        if not is_valid_unicode(text):
            return row.source_path(path)
    return ""


class _UploadPass:
    """The state of one pass: what has been seen, and the findings so far."""

    def __init__(self, config: IntakeConfig, counter: TokenCounter, sink: IO[bytes] | None):
        self.config = config
        self.counter = counter
        self.parse = SCHEMAS[config.schema]
        self.reject_on_error = config.policy is InvalidRowPolicy.REJECT_UPLOAD
        self.writer = JsonlWriter(sink) if sink is not None else None
        self.file_errors: list[Violation] = []
        self.errors = _Findings(config.max_reported)
        self.pii = _Findings(config.max_reported)
        self.duplicates = _Findings(config.max_reported)
        self.first_row_of: dict[bytes, int] = {}  # row hash -> row number of first occurrence
        self.digests: list[bytes] = []  # stored candidates, in file order
        self.row_numbers = array("q")  # their row numbers
        self.measures = RowMeasures()  # tokens and roles of every valid unique row
        self.near = (
            NearDuplicateFinder(
                config.near_dup_threshold,
                config.near_dup_num_perm,
                config.near_dup_shingle_words,
                config.near_dup_max_candidates,
            )
            if config.near_dup_threshold is not None
            else None
        )
        self.rows_total = self.rows_invalid = self.exact_duplicates = 0

    def invalid(self, row: int, problems: list[Problem]) -> None:
        self.rows_invalid += 1
        for problem in problems[: self.config.max_problems_per_row]:
            self.errors.add(problem.at(row), problem.code)

    def add(self, raw: RawRow) -> None:
        self.rows_total += 1
        if raw.value is None:
            self.invalid(raw.row, raw.problems)
            return
        row, problems = self.parse(raw.value, self.config.max_json_depth)
        if row is None:
            self.invalid(raw.row, problems)
            return
        try:
            line = canonical_json(row.to_json())
        except UnicodeEncodeError:
            message = "text is not valid Unicode (a lone surrogate escape or undecodable bytes)"
            field = _invalid_text_field(row)
            self.invalid(raw.row, [Problem(field, ErrorCode.BAD_ENCODING, message)])
            return
        digest = row_digest(line)
        first = self.first_row_of.get(digest)
        if first is not None:  # the same content already passed every check
            self.exact_duplicates += 1
            self.duplicates.add(DuplicateRow(raw.row, first, "exact", 1.0), "exact")
            return
        row.tokens = count_row_tokens(row, self.counter, self.config.per_message_overhead_tokens)
        problems = run_checks(row, self.config)
        if problems:
            self.invalid(raw.row, problems)
            return
        for finding in scan_row(row, self.config.pii_detectors):
            self.pii.add(finding.at(raw.row), finding.code)
        self.first_row_of[digest] = raw.row
        self.measures.add(row.tokens, [m["role"] for m in row.messages])
        if self.reject_on_error and self.rows_invalid:
            return  # the upload is rejected: keep validating, stop storing
        self.digests.append(digest)
        self.row_numbers.append(raw.row)
        if self.near is not None:
            self.near.add("\n".join(text for _, text in row.texts))
        if self.writer is not None:
            self.writer.write_line(line + b"\n")

    def finish(self) -> ValidationResult:
        config = self.config
        rejected_for_rows = self.reject_on_error and self.rows_invalid > 0
        if not self.file_errors and not len(self.measures) and not rejected_for_rows:
            message = "no rows to store" if self.rows_total else "the upload has no rows"
            self.file_errors.append(Violation(0, "", ErrorCode.NO_ROWS, message))
        accepted = not self.file_errors and not rejected_for_rows

        near_found = self.near.find(self.digests) if (self.near and accepted) else []
        keep = np.ones(len(self.measures), dtype=bool)  # rejected: stats of every valid row
        for found in near_found:
            keep[found.index] = False
            rows = self.row_numbers[found.index], self.row_numbers[found.kept]
            self.duplicates.add(DuplicateRow(*rows, "near", found.similarity), "near")
        stored = [d for d, k in zip(self.digests, keep, strict=True) if k] if accepted else []
        for violation in self.file_errors:
            self.errors.counts[violation.code] += 1
        return ValidationResult(
            config=config,
            accepted=accepted,
            version=version_id(stored) if accepted else "",
            rows_total=self.rows_total,
            rows_invalid=self.rows_invalid,
            exact_duplicates=self.exact_duplicates,
            near_duplicates=len(near_found),
            rows_stored=len(stored),
            errors=self.file_errors + self.errors.listed,
            errors_total=len(self.file_errors) + self.errors.total,
            error_counts=dict(self.errors.counts),
            pii_findings=self.pii.listed,
            pii_total=self.pii.total,
            pii_counts=dict(self.pii.counts),
            duplicates=self.duplicates.listed,
            stats=DatasetStats.build(self.measures, keep, config.length_buckets, self.counter.name),
            split=assign_split(stored, config.eval_fraction, config.split_seed),
            near_duplicate_digests=frozenset(self.digests[f.index] for f in near_found),
            normalised=self.writer.stored() if self.writer else StoredFile(0, 0, ""),
            row_digests=stored,
        )

    def close(self) -> None:
        if self.near is not None:
            self.near.close()


def validate_upload(
    source: ByteSource,
    config: IntakeConfig | None = None,
    sink: IO[bytes] | None = None,
    *,
    token_counter: TokenCounter | None = None,
) -> ValidationResult:
    """Validates and normalises an upload in one streaming pass (see the module doc).

    source: a binary file object, an iterable of byte chunks, or bytes. sink: where the
    normalised rows go (a temporary file, typically); None discards them. Under
    REJECT_UPLOAD the sink stops receiving rows at the first invalid one, and a rejected
    result's sink content is to be discarded.
    """
    config = config or IntakeConfig()
    upload = _UploadPass(config, token_counter or ApproxTokenCounter(), sink)
    try:
        for raw in READERS[config.format](source, config):
            if raw.row == 0:  # the file itself: nothing after this can be trusted
                upload.file_errors.extend(p.at(0) for p in raw.problems)
                break
            upload.add(raw)
        return upload.finish()
    finally:
        upload.close()


def run_intake(
    source: ByteSource,
    config: IntakeConfig | None,
    train_sink: IO[bytes],
    eval_sink: IO[bytes],
    *,
    token_counter: TokenCounter | None = None,
    spool_dir: str | None = None,
) -> ValidationResult:
    """validate_upload into a temporary spool file, then write_split into the two sinks
    (only when accepted). The result's `files` describes what was written."""
    with tempfile.TemporaryFile(dir=spool_dir) as spool:
        result = validate_upload(source, config, spool, token_counter=token_counter)
        if not result.accepted:
            return result
        spool.seek(0)
        files = write_split(
            spool, result.split, train_sink, eval_sink, skip=result.near_duplicate_digests
        )
    return replace(result, files=files)
