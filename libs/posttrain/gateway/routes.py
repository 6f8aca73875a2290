"""The route table as the request path reads it: what serves (tenant, use case, stage).

A route is written by the deployment controller only; this module reads it, and lists
deployments for ListDeployments.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from posttrain.gateway import names
from posttrain.gateway.controller import KINDS
from posttrain.gateway.tables import FAILED, LIVE, SUPERSEDED, DeploymentRow, RouteRow
from posttrain.rpc.errors import InvalidArgument
from posttrain.v1 import common_pb2, gateway_pb2


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


STATES = {
    LIVE: gateway_pb2.DEPLOYMENT_STATE_LIVE,
    SUPERSEDED: gateway_pb2.DEPLOYMENT_STATE_SUPERSEDED,
    FAILED: gateway_pb2.DEPLOYMENT_STATE_FAILED,
}
KIND_PROTOS = {name: kind for kind, name in KINDS.items()}


def deployment_state(state: int) -> str:
    """A DeploymentState of a request as the rows hold it; INVALID_ARGUMENT if unknown."""
    for status, value in STATES.items():
        if value == state:
            return status
    raise InvalidArgument("states", f"{state} is not LIVE, SUPERSEDED or FAILED")


def list_deployments(
    session: Session,
    tenant: str | None,
    *,
    use_case: str = "",
    stage: str = "",
    states: Collection[str] = (),
    offset: int = 0,
    limit: int = 500,
) -> tuple[Sequence[DeploymentRow], int]:
    """(a page of deployments newest first, how many match in all); tenant None = every
    tenant's, use_case "" = every use case, stage "" = every stage, states () = all."""
    query = sa.select(DeploymentRow)
    if tenant is not None:
        query = query.where(DeploymentRow.tenant == tenant)
    if use_case:
        query = query.where(DeploymentRow.use_case == use_case)
    if stage:
        query = query.where(DeploymentRow.stage == stage)
    if states:
        query = query.where(DeploymentRow.status.in_(states))
    total = session.scalar(sa.select(sa.func.count()).select_from(query.subquery())) or 0
    page = query.order_by(DeploymentRow.created_at.desc(), DeploymentRow.id)
    return session.scalars(page.offset(offset).limit(limit)).all(), total


def deployment_proto(row: DeploymentRow) -> gateway_pb2.Deployment:
    message = gateway_pb2.Deployment(
        id=row.id,
        use_case=names.route_name(row.use_case, row.stage),
        tenant=row.tenant,
        model_version_id=row.model_version_id,
        triton_model=row.triton_model,
        lora_name=row.lora_name,
        live=row.status == LIVE,
        state=STATES.get(row.status, gateway_pb2.DEPLOYMENT_STATE_UNSPECIFIED),
        error=row.error,
        stage=row.stage,
        kind=KIND_PROTOS.get(row.kind, common_pb2.MODEL_KIND_UNSPECIFIED),
        rollback=row.rollback,
    )
    # The row is written once handling ends (created_at); `seconds` is how long it took.
    message.created_at.FromDatetime(row.created_at - dt.timedelta(seconds=row.seconds))
    message.completed_at.FromDatetime(row.created_at)
    return message
