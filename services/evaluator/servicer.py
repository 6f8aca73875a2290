"""The EvaluationService gRPC servicer: a thin shell over the library core.

RPCs not written yet keep the generated defaults, which answer UNIMPLEMENTED.
"""

from __future__ import annotations

from sqlalchemy import Engine

from posttrain.rpc.server import AddServicerFn
from posttrain.v1 import evaluation_pb2, evaluation_pb2_grpc
from services.evaluator.settings import EvaluatorSettings

SERVICE_NAME = evaluation_pb2.DESCRIPTOR.services_by_name["EvaluationService"].full_name


class EvaluationServicer(evaluation_pb2_grpc.EvaluationServiceServicer):
    def __init__(self, settings: EvaluatorSettings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine


def register(settings: EvaluatorSettings, engine: Engine) -> list[tuple[AddServicerFn, object]]:
    return [
        (
            evaluation_pb2_grpc.add_EvaluationServiceServicer_to_server,
            EvaluationServicer(settings, engine),
        )
    ]
