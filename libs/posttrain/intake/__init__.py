"""Dataset intake: uploads and upstream announcements become validated, immutable,
content-addressed dataset versions, approved (four eyes for regulated data) before any
training may use them. Library core of services/intake; no gRPC or Kafka client here.
"""

from posttrain.intake.catalog import (
    APPROVED,
    PENDING,
    REJECTED,
    STATE_TO_PROTO,
    DatasetCatalog,
    PreparedVersion,
    RecordedVersion,
    UploadSpec,
    artifact_name,
    check_name,
    check_version_id,
    manifest_ref,
)
from posttrain.intake.tables import INTAKE_MIGRATIONS
from posttrain.intake.upstream import UpstreamApproval, handle_data_approved, parse_data_approved

__all__ = [
    "APPROVED",
    "INTAKE_MIGRATIONS",
    "PENDING",
    "REJECTED",
    "STATE_TO_PROTO",
    "DatasetCatalog",
    "PreparedVersion",
    "RecordedVersion",
    "UploadSpec",
    "UpstreamApproval",
    "artifact_name",
    "check_name",
    "check_version_id",
    "handle_data_approved",
    "manifest_ref",
    "parse_data_approved",
]
