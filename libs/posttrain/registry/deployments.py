"""Deployments: what the registry asked the serving layer to load (deployment.requested)
and what it answered (deployment.completed).

A deployment is `requested`, then `live` or `failed`; when one goes live, the earlier
live or requested deployments of its alias become `superseded`. A version is still
served while one of its deployments is requested or live, so it can't be archived.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from posttrain.db import utcnow
from posttrain.events import topics
from posttrain.registry import audit, lineage, names
from posttrain.registry.emit import Emit
from posttrain.registry.tables import AliasRow, BaseModelRow, DeploymentRow, ModelVersionRow
from posttrain.storage import ArtifactRef
from posttrain.v1 import events_pb2

SERVING = ("requested", "live")


def request(
    session: Session,
    *,
    alias: AliasRow,
    version: ModelVersionRow,
    previous_version_id: str,
    rollback: bool,
    actor: str,
    reason: str,
    emit: Emit,
) -> DeploymentRow | None:
    """Record a deployment of `version` for `alias` and stage deployment.requested; None
    for a stage the serving layer does not load (candidate)."""
    if alias.stage not in names.DEPLOYED_STAGES:
        return None
    row = DeploymentRow(
        id=f"dep-{uuid.uuid4().hex[:16]}",
        alias_id=alias.id,
        tenant=alias.tenant,
        model_version_id=version.id,
        previous_model_version_id=previous_version_id,
        rollback=rollback,
        status="requested",
        requested_by=actor,
        requested_at=utcnow(),
        error="",
        triton_model="",
        lora_name="",
    )
    session.add(row)
    key = names.alias_key(alias.tenant, alias.use_case, alias.stage)
    node = lineage.ensure_node(
        session,
        names.DEPLOYMENT,
        row.id,
        label=f"{alias.use_case}/{alias.stage} {row.id}",
        tenant=alias.tenant,
        attributes={"alias": key, "status": row.status, "rollback": str(rollback).lower()},
    )
    lineage.add_edge(session, names.node_id(names.MODEL_VERSION, version.id), node, "deployment")
    base = session.get(BaseModelRow, version.base_model)
    payload = events_pb2.DeploymentRequested(
        deployment_id=row.id,
        alias=f"{alias.use_case}/{alias.stage}",
        tenant=alias.tenant,
        model_version_id=version.id,
        previous_model_version_id=previous_version_id,
        kind=names.kind_value(version.kind),
        base_model=version.base_model,
        artifacts=[ArtifactRef(**a).to_proto() for a in version.artifacts],
        rollback=rollback,
        requested_by=actor,
        use_case=alias.use_case,
        stage=alias.stage,
        reason=reason,
    )
    if base is not None:
        payload.base_model_weights.CopyFrom(ArtifactRef(**base.weights).to_proto())
    emit(topics.DEPLOYMENT_REQUESTED, payload, aggregate_id=key)
    return row


def record_result(
    session: Session, event: events_pb2.DeploymentCompleted, *, actor: str
) -> DeploymentRow | None:
    """Apply the serving layer's answer; None for a deployment this registry never
    requested. An answer for a deployment already settled is a no-op."""
    row = session.get(DeploymentRow, event.deployment_id) if event.deployment_id else None
    if row is None or row.status != "requested":
        return row
    now = utcnow()
    row.completed_at = now
    row.triton_model = event.triton_model
    row.lora_name = event.lora_name
    if event.ok:
        row.status = "live"
        earlier = session.scalars(
            sa.select(DeploymentRow).where(
                DeploymentRow.alias_id == row.alias_id,
                DeploymentRow.id != row.id,
                DeploymentRow.status.in_(SERVING),
                DeploymentRow.requested_at <= row.requested_at,
            )
        ).all()
        for other in earlier:
            other.status = "superseded"
            lineage.ensure_node(
                session, names.DEPLOYMENT, other.id, attributes={"status": "superseded"}
            )
    else:
        row.status = "failed"
        row.error = event.error or "the serving layer reported a failure without a message"
    node = lineage.ensure_node(
        session,
        names.DEPLOYMENT,
        row.id,
        attributes={"status": row.status, "triton_model": row.triton_model, "error": row.error},
    )
    audit.record(
        session,
        actor=actor,
        action=f"deployment.{row.status}",
        subject=node,
        tenant=row.tenant,
        reason=row.error,
        details={"model_version_id": row.model_version_id, "triton_model": row.triton_model},
    )
    return row


def serving(session: Session, version_id: str) -> Sequence[DeploymentRow]:
    """Deployments of the version that are requested or live."""
    return session.scalars(
        sa.select(DeploymentRow)
        .where(DeploymentRow.model_version_id == version_id, DeploymentRow.status.in_(SERVING))
        .order_by(DeploymentRow.requested_at)
    ).all()
