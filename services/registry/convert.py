"""Rows of the registry core -> RegistryService messages, and Stage enum <-> stage words."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp

from posttrain.registry import lineage, names, versions
from posttrain.registry.aliases import AliasView
from posttrain.registry.gate import GateStatus
from posttrain.registry.tables import AuditRow, BaseModelRow, ModelVersionRow
from posttrain.rpc.errors import InvalidArgument
from posttrain.storage import ArtifactRef
from posttrain.v1 import common_pb2, registry_pb2

_STAGES = {
    registry_pb2.STAGE_CANDIDATE: "candidate",
    registry_pb2.STAGE_STAGING: "staging",
    registry_pb2.STAGE_PRODUCTION: "production",
}
_STAGE_VALUES = {word: value for value, word in _STAGES.items()}
_DIRECTIONS = {
    registry_pb2.GetLineageRequest.DOWNSTREAM: "downstream",
    registry_pb2.GetLineageRequest.UPSTREAM: "upstream",
    registry_pb2.GetLineageRequest.BOTH: "both",
    registry_pb2.GetLineageRequest.DIRECTION_UNSPECIFIED: "both",
}


def stage_word(stage: int, field: str = "stage") -> str:
    if stage not in _STAGES:
        raise InvalidArgument(field, "is required: candidate, staging or production")
    return _STAGES[stage]


def direction_word(direction: int) -> str:
    if direction not in _DIRECTIONS:
        raise InvalidArgument("direction", f"unknown direction {direction}")
    return _DIRECTIONS[direction]


def timestamp(value: dt.datetime | None) -> Timestamp | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive datetimes; they were stored as UTC
        value = value.replace(tzinfo=dt.UTC)
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def base_model(row: BaseModelRow) -> registry_pb2.BaseModel:
    return registry_pb2.BaseModel(
        name=row.name,
        architecture=row.architecture,
        parameters=row.parameters,
        weights=ArtifactRef(**row.weights).to_proto(),
        chat_template_revision=row.chat_template_revision,
        created_at=timestamp(row.created_at),
        registered_by=row.registered_by,
        total_size_bytes=row.total_size_bytes,
    )


def model_version(row: ModelVersionRow, gate: GateStatus) -> registry_pb2.ModelVersion:
    return registry_pb2.ModelVersion(
        id=row.id,
        name=row.name,
        version=row.version,
        kind=names.kind_value(row.kind),
        base_model=row.base_model,
        method=names.method_value(row.method),
        artifacts=[ref.to_proto() for ref in versions.artifact_refs(row)],
        lineage=versions.lineage_proto(row),
        tenant=row.tenant,
        chat_template_revision=row.chat_template_revision,
        archived=row.archived_at is not None,
        gate_verdict=names.verdict_value(gate.verdict),
        gate_reasons=gate.reasons,
        created_at=timestamp(row.created_at),
        config_yaml=row.config_yaml,
        produced_by=row.produced_by,
        metrics=row.metrics,
        archived_at=timestamp(row.archived_at),
        archive_reason=row.archive_reason or "",
    )


def alias(view: AliasView) -> registry_pb2.Alias:
    row = view.row
    return registry_pb2.Alias(
        use_case=row.use_case,
        tenant=row.tenant,
        stage=_STAGE_VALUES[row.stage],
        model_version_id=row.model_version_id,
        previous_model_version_id=view.rollback_to[0] if view.rollback_to else "",
        updated_at=timestamp(row.updated_at),
        updated_by=row.updated_by,
        revision=row.revision,
        rollback_to=view.rollback_to,
    )


def lineage_graph(graph: lineage.Graph) -> registry_pb2.LineageGraph:
    return registry_pb2.LineageGraph(
        nodes=[
            registry_pb2.LineageNode(
                id=n.id, kind=n.kind, label=n.label, attributes=dict(n.attributes)
            )
            for n in graph.nodes
        ],
        edges=[
            registry_pb2.LineageEdge(from_id=e.from_id, to_id=e.to_id, relation=e.relation)
            for e in graph.edges
        ],
    )


def audit_entry(row: AuditRow) -> common_pb2.AuditEntry:
    return common_pb2.AuditEntry(
        id=str(row.id),
        actor=row.actor,
        action=row.action,
        subject=row.subject,
        reason=row.reason,
        at=timestamp(row.at),
        details=row.details,
    )
