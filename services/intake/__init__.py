"""The intake service: datasets, versions, approvals and data lineage (IntakeService in proto/posttrain/v1/intake.proto)."""
