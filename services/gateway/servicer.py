"""The InferenceGateway gRPC servicer: a thin shell over posttrain.gateway.

Who may call what (admin may do everything; every call stays inside the caller's tenant):
  Generate, GenerateStream               client
  RecordFeedback                         client, rater   (the tenant's own requests only)
  CreateExperiment, StopExperiment       operator
  GetExperimentReport                    operator, viewer
  ListDeployments                        operator, viewer, client (another tenant's, or
                                         "*" for all: admin)
The caller's gRPC deadline becomes Triton's client_timeout.
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from posttrain.gateway import (
    VariantSpec,
    deployment_proto,
    deployment_state,
    experiment_proto,
    list_deployments,
    list_experiments,
    names,
)
from posttrain.rpc.auth import Role, current_principal, require_role
from posttrain.rpc.errors import PermissionDenied
from posttrain.rpc.paging import MAX_PAGE_SIZE, page_bounds, page_response
from posttrain.rpc.server import AddServicerFn
from posttrain.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.gateway.app import GatewayApp, build_app
from services.gateway.settings import GatewaySettings

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["InferenceGateway"].full_name
READ_ROLES = (Role.OPERATOR, Role.VIEWER)


class GatewayServicer(gateway_pb2_grpc.InferenceGatewayServicer):
    def __init__(self, app: GatewayApp) -> None:
        self.app = app

    # ------------------------------------------------------------------ inference

    def Generate(self, request, context):
        principal = require_role(current_principal(), Role.CLIENT)
        return self.app.gateway.generate(
            principal.tenant, request, timeout_s=context.time_remaining()
        )

    def GenerateStream(self, request, context):
        principal = require_role(current_principal(), Role.CLIENT)
        yield from self.app.gateway.generate_stream(
            principal.tenant, request, timeout_s=context.time_remaining()
        )

    def RecordFeedback(self, request, context):
        principal = require_role(current_principal(), Role.CLIENT, Role.RATER)
        self.app.gateway.record_feedback(principal.tenant, principal.name, request)
        return gateway_pb2.RecordFeedbackResponse()

    # ------------------------------------------------------------------ experiments

    def CreateExperiment(self, request, context):
        principal = require_role(current_principal(), Role.OPERATOR)
        row = self.app.experiments.create(
            tenant=principal.tenant,
            route=request.use_case,
            variants=[VariantSpec(v.name, v.model_version_id, v.share) for v in request.variants],
            max_policy_incident_rate=request.max_policy_incident_rate,
            actor=principal.name,
        )
        return experiment_proto(row)

    def StopExperiment(self, request, context):
        principal = require_role(current_principal(), Role.OPERATOR)
        row = self.app.experiments.stop(
            tenant=principal.tenant, experiment_id=request.id, actor=principal.name
        )
        return experiment_proto(row)

    def GetExperimentReport(self, request, context):
        principal = require_role(current_principal(), *READ_ROLES)
        return self.app.experiments.report(tenant=principal.tenant, experiment_id=request.id)

    def ListExperiments(self, request, context):
        principal = require_role(current_principal(), *READ_ROLES)
        offset, limit = page_bounds(request.page)
        with Session(self.app.engine) as session:
            rows, total = list_experiments(
                session,
                principal.tenant,
                use_case=request.use_case,
                running_only=request.running_only,
                offset=offset,
                limit=limit,
            )
            return gateway_pb2.ListExperimentsResponse(
                experiments=[experiment_proto(r) for r in rows],
                page=page_response(offset, len(rows), total),
            )

    # ------------------------------------------------------------------ deployments

    def ListDeployments(self, request, context):
        principal = require_role(current_principal(), *READ_ROLES, Role.CLIENT)
        tenant: str | None = request.tenant or principal.tenant
        if tenant != principal.tenant:
            if Role.ADMIN not in principal.roles:
                raise PermissionDenied(
                    f"{principal.name!r} may list the deployments of tenant "
                    f"{principal.tenant!r} only"
                )
            tenant = None if tenant == "*" else tenant
        use_case, stage = "", ""
        if request.use_case:
            use_case, stage = names.parse_use_case(request.use_case)
            stage = stage if "/" in request.use_case else ""  # "x": every stage of x
        states = [deployment_state(s) for s in request.states]
        # page_size 0: the newest 500, what this RPC answered before it had paging.
        page = common_pb2.PageRequest(
            page_size=request.page.page_size or MAX_PAGE_SIZE, page_token=request.page.page_token
        )
        offset, limit = page_bounds(page)
        with Session(self.app.engine) as session:
            rows, total = list_deployments(
                session,
                tenant,
                use_case=use_case,
                stage=stage,
                states=states,
                offset=offset,
                limit=limit,
            )
            return gateway_pb2.ListDeploymentsResponse(
                deployments=[deployment_proto(r) for r in rows],
                page=page_response(offset, len(rows), total),
            )


def register(settings: GatewaySettings, engine: Engine) -> list[tuple[AddServicerFn, object]]:
    return [
        (
            gateway_pb2_grpc.add_InferenceGatewayServicer_to_server,
            GatewayServicer(build_app(settings, engine)),
        )
    ]
