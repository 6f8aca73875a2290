"""The IntakeService gRPC servicer: a thin shell over the library core.

RPCs not written yet keep the generated defaults, which answer UNIMPLEMENTED.
"""

from __future__ import annotations

from sqlalchemy import Engine

from posttrain.rpc.server import AddServicerFn
from posttrain.v1 import intake_pb2, intake_pb2_grpc
from services.intake.settings import IntakeSettings

SERVICE_NAME = intake_pb2.DESCRIPTOR.services_by_name["IntakeService"].full_name


class IntakeServicer(intake_pb2_grpc.IntakeServiceServicer):
    def __init__(self, settings: IntakeSettings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine


def register(settings: IntakeSettings, engine: Engine) -> list[tuple[AddServicerFn, object]]:
    return [
        (
            intake_pb2_grpc.add_IntakeServiceServicer_to_server,
            IntakeServicer(settings, engine),
        )
    ]
