"""A servicer for the rpc tests whose behaviour the request picks, and small helpers."""

from __future__ import annotations

import logging
import socket
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from posttrain.config import GrpcServerSettings
from posttrain.rpc import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    current_correlation_id,
    current_principal,
    require_role,
)
from posttrain.v1 import (
    intake_pb2,
    intake_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)

log = logging.getLogger("tests.rpc.probe")

REGISTRY = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
TRAINING = training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name
INTAKE = intake_pb2.DESCRIPTOR.services_by_name["IntakeService"].full_name

# name -> (exception the handler raises, status the client must see)
ERRORS: dict[str, tuple[Exception, grpc.StatusCode]] = {
    "InvalidArgument": (
        InvalidArgument("messages[2].role", "must be user, assistant or system"),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "InvalidArguments": (
        InvalidArgument(
            violations=[
                FieldViolation("learning_rate", "must be > 0", code="out_of_range"),
                FieldViolation("messages[0].content", "empty", code="missing_field", row=7),
            ]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "NotFound": (NotFound("dataset", "support-faq"), grpc.StatusCode.NOT_FOUND),
    "AlreadyExists": (AlreadyExists("alias", "chat@prod"), grpc.StatusCode.ALREADY_EXISTS),
    "PermissionDenied": (PermissionDenied("not yours"), grpc.StatusCode.PERMISSION_DENIED),
    "Unauthenticated": (Unauthenticated(), grpc.StatusCode.UNAUTHENTICATED),
    "FailedPrecondition": (
        FailedPrecondition("dataset is rejected"),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    "Conflict": (Conflict("alias revision 3 is stale"), grpc.StatusCode.ABORTED),
    "ResourceExhausted": (
        ResourceExhausted("GPU quota used up"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    "Unavailable": (Unavailable("object store down"), grpc.StatusCode.UNAVAILABLE),
}
SECRET_TEXT = "db password is hunter2"


def _act(command: str, context: grpc.ServicerContext) -> str:
    """Does what `command` says; returns a string for the reply."""
    verb, _, arg = command.partition(":")
    if verb == "raise":
        raise ERRORS[arg][0]
    if verb == "boom":
        raise RuntimeError(SECRET_TEXT)
    if verb == "abort":
        context.abort(grpc.StatusCode.OUT_OF_RANGE, "explicit abort")
    if verb == "sleep":
        time.sleep(float(arg))
    if verb == "need":
        require_role(current_principal(), *arg.split(","))
    if verb == "log":
        log.info("handler ran")
    return current_correlation_id() or ""


class Probe(
    registry_pb2_grpc.RegistryServiceServicer,
    training_pb2_grpc.TrainingServiceServicer,
    intake_pb2_grpc.IntakeServiceServicer,
):
    """GetAlias (unary), WatchJob (server streaming), UploadDataset (client streaming)."""

    def GetAlias(self, request, context):
        correlation_id = _act(request.use_case, context)
        p = current_principal()
        return registry_pb2.Alias(
            use_case=correlation_id,
            updated_by=p.name if p else "",
            tenant=p.tenant if p else "",
            previous_model_version_id=",".join(sorted(p.roles)) if p else "",
        )

    def WatchJob(self, request, context):
        # One message first, so that errors mid-stream are tested too.
        yield training_pb2.JobProgress(job_id="first", step=1)
        _act(request.job_id, context)
        yield training_pb2.JobProgress(job_id="second", step=2)

    def UploadDataset(self, request_iterator, context):
        chunks = 0
        for request in request_iterator:
            chunks += 1
            if request.HasField("chunk"):
                _act(request.chunk.decode(), context)
        return intake_pb2.UploadDatasetResponse(already_existed=chunks > 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics on the loopback port: (sample name, sorted labels) -> value."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def grpc_settings(**overrides: Any) -> GrpcServerSettings:
    values = {"host": "127.0.0.1", "port": 0, "grace_seconds": 5.0, "max_workers": 8}
    return GrpcServerSettings(**(values | overrides))


def probe_servicers() -> list[tuple[Callable, Any]]:
    probe = Probe()
    return [
        (registry_pb2_grpc.add_RegistryServiceServicer_to_server, probe),
        (training_pb2_grpc.add_TrainingServiceServicer_to_server, probe),
        (intake_pb2_grpc.add_IntakeServiceServicer_to_server, probe),
    ]


def registry(channel: grpc.Channel) -> registry_pb2_grpc.RegistryServiceStub:
    return registry_pb2_grpc.RegistryServiceStub(channel)


def get_alias(channel: grpc.Channel, command: str = "ok", **kwargs: Any) -> registry_pb2.Alias:
    return registry(channel).GetAlias(
        registry_pb2.GetAliasRequest(use_case=command), timeout=10, **kwargs
    )
