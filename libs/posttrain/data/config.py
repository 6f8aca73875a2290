"""The knobs of one intake validation pass, as plain data.

IntakeConfig is everything that decides the outcome of a pass except the token counter
(an object, passed next to it). The intake service builds one from UploadMetadata and its
own settings; the same config over the same bytes always gives the same result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from posttrain.v1 import intake_pb2


class DataFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"
    PARQUET = "parquet"

    @classmethod
    def from_proto(cls, value: int) -> DataFormat:
        names = {
            intake_pb2.DATA_FORMAT_JSONL: cls.JSONL,
            intake_pb2.DATA_FORMAT_CSV: cls.CSV,
            intake_pb2.DATA_FORMAT_PARQUET: cls.PARQUET,
        }
        if value not in names:
            raise ValueError(f"data format {value} is not one of JSONL, CSV, PARQUET")
        return names[value]


class RowSchema(StrEnum):
    INSTRUCTION = "instruction"
    CHAT = "chat"
    AUTO = "auto"  # per row: a `messages` field means chat, anything else instruction

    @classmethod
    def from_proto(cls, value: int) -> RowSchema:
        return {
            intake_pb2.ROW_SCHEMA_INSTRUCTION: cls.INSTRUCTION,
            intake_pb2.ROW_SCHEMA_CHAT: cls.CHAT,
        }.get(value, cls.AUTO)


class InvalidRowPolicy(StrEnum):
    REJECT_UPLOAD = "reject_upload"  # one bad row rejects the upload; all errors listed
    DROP_INVALID = "drop_invalid"  # keep valid rows; dropped ones listed with reasons

    @classmethod
    def from_proto(cls, value: int) -> InvalidRowPolicy:
        if value == intake_pb2.INVALID_ROW_POLICY_DROP_INVALID:
            return cls.DROP_INVALID
        return cls.REJECT_UPLOAD  # UNSPECIFIED is reject: the safe server default


def _help(text: str, default: Any = None, factory: Any = None) -> Any:
    """A dataclass field with its help text: the config is the documentation."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


# Token-length histogram bucket lower bounds: 0-127, 128-255, ..., 32768+.
DEFAULT_LENGTH_BUCKETS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


@dataclass(frozen=True)
class IntakeConfig:
    format: DataFormat = _help("file format of the upload", DataFormat.JSONL)
    schema: RowSchema = _help("row schema; AUTO decides per row", RowSchema.AUTO)
    policy: InvalidRowPolicy = _help(
        "reject the whole upload on any bad row, or drop bad rows and keep the rest",
        InvalidRowPolicy.REJECT_UPLOAD,
    )
    max_reported: int = _help(
        "cap on listed errors, PII findings and duplicates each (totals are always exact)",
        1000,
    )
    max_problems_per_row: int = _help("cap on errors listed for a single row", 20)
    max_row_bytes: int = _help(
        "longest accepted JSONL line / CSV record in bytes; longer ones are reported "
        "as row_too_long and never held in memory whole",
        8 * 1024 * 1024,
    )
    max_json_depth: int = _help("deepest accepted JSON nesting in a row", 64)
    max_tokens_per_row: int | None = _help(
        "token budget per row (content + per-message overhead); None = no budget", None
    )
    per_message_overhead_tokens: int = _help(
        "tokens added per message for role headers a chat template will add; the exact "
        "figure depends on the template, which this library does not apply",
        4,
    )
    disabled_checks: tuple[str, ...] = _help("names in ROW_CHECKS to skip", factory=tuple)
    pii_detectors: tuple[str, ...] | None = _help(
        "names in PII_DETECTORS to run; None = all, () = none", None
    )
    near_dup_threshold: float | None = _help(
        "estimated Jaccard similarity of word shingles at or above which a row is a "
        "near-duplicate of another; None disables near-duplicate removal",
        0.9,
    )
    near_dup_num_perm: int = _help("MinHash signature length (permutations)", 128)
    near_dup_shingle_words: int = _help("words per shingle", 3)
    near_dup_max_candidates: int = _help(
        "most earlier rows a row is compared with per LSH bucket (bounds hostile input)", 64
    )
    eval_fraction: float = _help(
        "share of stored rows that go to eval, decided per row by hash; with >= 2 rows "
        "and 0 < fraction < 1 both splits get at least one row",
        0.05,
    )
    split_seed: int = _help("seed of the train/eval hash split", 0)
    length_buckets: tuple[int, ...] = _help(
        "lower bounds of the token-length histogram buckets after the first (0)",
        DEFAULT_LENGTH_BUCKETS,
    )
    parquet_batch_rows: int = _help("rows per Parquet read batch", 1024)

    def __post_init__(self) -> None:
        # Accept plain strings ("csv") as well as the enums.
        object.__setattr__(self, "format", DataFormat(self.format))
        object.__setattr__(self, "schema", RowSchema(self.schema))
        object.__setattr__(self, "policy", InvalidRowPolicy(self.policy))
        if not 0.0 <= self.eval_fraction <= 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1], got {self.eval_fraction}")
        if self.near_dup_threshold is not None and not 0.0 < self.near_dup_threshold <= 1.0:
            raise ValueError(f"near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}")
        if self.near_dup_num_perm < 8 or self.near_dup_shingle_words < 1:
            raise ValueError("near_dup_num_perm must be >= 8 and near_dup_shingle_words >= 1")
        if self.max_row_bytes < 16 or self.max_json_depth < 2:
            raise ValueError("max_row_bytes must be >= 16 and max_json_depth >= 2")
        if list(self.length_buckets) != sorted(set(self.length_buckets)) or (
            self.length_buckets and self.length_buckets[0] <= 0
        ):
            raise ValueError("length_buckets must be increasing positive integers")
