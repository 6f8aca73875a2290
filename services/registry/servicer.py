"""The RegistryService gRPC servicer: a thin shell over the library core.

RPCs not written yet keep the generated defaults, which answer UNIMPLEMENTED.
"""

from __future__ import annotations

from sqlalchemy import Engine

from posttrain.rpc.server import AddServicerFn
from posttrain.v1 import registry_pb2, registry_pb2_grpc
from services.registry.settings import RegistrySettings

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, settings: RegistrySettings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine


def register(settings: RegistrySettings, engine: Engine) -> list[tuple[AddServicerFn, object]]:
    return [
        (
            registry_pb2_grpc.add_RegistryServiceServicer_to_server,
            RegistryServicer(settings, engine),
        )
    ]
