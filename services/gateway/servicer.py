"""The InferenceGateway gRPC servicer: a thin shell over the library core.

RPCs not written yet keep the generated defaults, which answer UNIMPLEMENTED.
"""

from __future__ import annotations

from sqlalchemy import Engine

from posttrain.rpc.server import AddServicerFn
from posttrain.v1 import gateway_pb2, gateway_pb2_grpc
from services.gateway.settings import GatewaySettings

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["InferenceGateway"].full_name


class GatewayServicer(gateway_pb2_grpc.InferenceGatewayServicer):
    def __init__(self, settings: GatewaySettings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine


def register(settings: GatewaySettings, engine: Engine) -> list[tuple[AddServicerFn, object]]:
    return [
        (
            gateway_pb2_grpc.add_InferenceGatewayServicer_to_server,
            GatewayServicer(settings, engine),
        )
    ]
