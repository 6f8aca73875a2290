"""The route table as the request path reads it: what serves (tenant, use case, stage).

A route is written by the deployment controller only; this module reads it, and lists
deployments for ListDeployments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from posttrain.gateway import names
from posttrain.gateway.tables import LIVE, DeploymentRow, RouteRow
from posttrain.v1 import gateway_pb2


@dataclass(frozen=True)
class Target:
    """What one request is sent to."""

    deployment_id: str
    model_version_id: str
    triton_model: str
    lora_name: str
    stream_model: str  # "" = no decoupled twin: a stream is answered in one chunk

    @classmethod
    def of_route(cls, route: RouteRow) -> Target:
        return cls(
            route.deployment_id,
            route.model_version_id,
            route.triton_model,
            route.lora_name,
            route.stream_model,
        )

    def as_dict(self) -> dict[str, str]:
        return {
            "deployment_id": self.deployment_id,
            "model_version_id": self.model_version_id,
            "triton_model": self.triton_model,
            "lora_name": self.lora_name,
            "stream_model": self.stream_model,
        }


def find_route(session: Session, tenant: str, use_case: str, stage: str) -> RouteRow | None:
    return session.scalar(
        sa.select(RouteRow).where(
            RouteRow.tenant == tenant, RouteRow.use_case == use_case, RouteRow.stage == stage
        )
    )


def live_deployment(
    session: Session, tenant: str, use_case: str, model_version_id: str
) -> DeploymentRow | None:
    """The newest live deployment of the version on any stage of the tenant's use case."""
    return session.scalar(
        sa.select(DeploymentRow)
        .where(
            DeploymentRow.tenant == tenant,
            DeploymentRow.use_case == use_case,
            DeploymentRow.model_version_id == model_version_id,
            DeploymentRow.status == LIVE,
        )
        .order_by(DeploymentRow.created_at.desc())
    )


def list_deployments(
    session: Session, tenant: str | None, *, limit: int = 500
) -> Sequence[DeploymentRow]:
    """Deployments newest first; tenant None = every tenant's."""
    query = sa.select(DeploymentRow).order_by(DeploymentRow.created_at.desc()).limit(limit)
    if tenant is not None:
        query = query.where(DeploymentRow.tenant == tenant)
    return session.scalars(query).all()


def deployment_proto(row: DeploymentRow) -> gateway_pb2.Deployment:
    return gateway_pb2.Deployment(
        id=row.id,
        use_case=names.route_name(row.use_case, row.stage),
        tenant=row.tenant,
        model_version_id=row.model_version_id,
        triton_model=row.triton_model,
        lora_name=row.lora_name,
        live=row.status == LIVE,
    )
