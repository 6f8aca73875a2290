"""The TrainingService gRPC servicer: a thin shell over the library core.

RPCs not written yet keep the generated defaults, which answer UNIMPLEMENTED.
"""

from __future__ import annotations

from sqlalchemy import Engine

from posttrain.rpc.server import AddServicerFn
from posttrain.v1 import training_pb2, training_pb2_grpc
from services.trainer.settings import TrainerSettings

SERVICE_NAME = training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, settings: TrainerSettings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine


def register(settings: TrainerSettings, engine: Engine) -> list[tuple[AddServicerFn, object]]:
    return [
        (
            training_pb2_grpc.add_TrainingServiceServicer_to_server,
            TrainingServicer(settings, engine),
        )
    ]
