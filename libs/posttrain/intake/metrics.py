"""Prometheus metrics of intake (prometheus_client's default registry; the service exposes
them on settings.metrics_port). Uploads over gRPC and upstream data.approved events
count alike."""

from __future__ import annotations

from prometheus_client import Counter

from posttrain.data import ValidationResult

ROWS = Counter(
    "posttrain_intake_rows_total",
    "rows received, by outcome: stored, duplicate (dropped), invalid, refused (valid rows "
    "of a refused upload)",
    ["outcome"],
)
VERSIONS = Counter(
    "posttrain_intake_versions_total",
    "dataset versions offered, by outcome: created, existing (same rows again), refused",
    ["outcome"],
)


def count_rows(result: ValidationResult) -> None:
    ROWS.labels("invalid").inc(result.rows_invalid)
    ROWS.labels("duplicate").inc(result.duplicates_removed)
    kept = result.rows_valid - result.duplicates_removed  # = rows_stored when accepted
    ROWS.labels("stored" if result.accepted else "refused").inc(kept)
