"""Dataset intake core: schemas, streaming validation with per-row errors, normalisation
to one stored chat form, dedupe, PII findings, content-addressed versions and the
train/eval split.

Pure library: no gRPC, Kafka or object storage here (services/intake wraps it). Chat
templating and tokenisation for training live elsewhere (posttrain.data.chat_template,
posttrain.training); this package only counts tokens for budgets and statistics.

Where things are: config (IntakeConfig), readers (formats), schemas (row shapes and the
stored form), canonical (bytes and hashes), checks (registered row checks), pii
(registered detectors), tokens, dedupe (near-duplicates), split, version (ids, diff),
stats, validation (the pass itself and its result).
"""

from posttrain.data.canonical import canonical_json, row_hash
from posttrain.data.checks import ROW_CHECKS, row_check
from posttrain.data.config import DataFormat, IntakeConfig, InvalidRowPolicy, RowSchema
from posttrain.data.pii import PII_DETECTORS, pii_detector
from posttrain.data.readers import READERS, RawRow
from posttrain.data.schemas import ROLES, SCHEMAS, ChatRow
from posttrain.data.split import DatasetSplit, SplitFiles, StoredFile, assign_split, write_split
from posttrain.data.stats import DatasetStats
from posttrain.data.tokens import ApproxTokenCounter, HFTokenCounter, TokenCounter
from posttrain.data.validation import (
    DuplicateRow,
    ValidationResult,
    run_intake,
    validate_upload,
)
from posttrain.data.version import VERSION_RULE, DatasetDiff, dataset_version, diff, version_id
from posttrain.data.violations import ErrorCode, Violation

__all__ = [
    "PII_DETECTORS",
    "READERS",
    "ROLES",
    "ROW_CHECKS",
    "SCHEMAS",
    "VERSION_RULE",
    "ApproxTokenCounter",
    "ChatRow",
    "DataFormat",
    "DatasetDiff",
    "DatasetSplit",
    "DatasetStats",
    "DuplicateRow",
    "ErrorCode",
    "HFTokenCounter",
    "IntakeConfig",
    "InvalidRowPolicy",
    "RawRow",
    "RowSchema",
    "SplitFiles",
    "StoredFile",
    "TokenCounter",
    "ValidationResult",
    "Violation",
    "assign_split",
    "canonical_json",
    "dataset_version",
    "diff",
    "pii_detector",
    "row_check",
    "row_hash",
    "run_intake",
    "validate_upload",
    "version_id",
    "write_split",
]
