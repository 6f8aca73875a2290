"""What SubmitJob asks other services before it accepts a job: the dataset version
(intake's GetVersion: is it APPROVED, where are its files) and the base model
(registry's GetBaseModel: is it registered, where are its weights).

The calls carry the caller's own credentials, so intake and the registry apply their own
tenant rules to the caller, not to the trainer. Their statuses come back as ServiceErrors
naming what was asked for. Protocols, so tests can stand in for the services.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import grpc

from posttrain.rpc import make_channel
from posttrain.rpc.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from posttrain.storage import ArtifactRef
from posttrain.v1 import common_pb2, intake_pb2, intake_pb2_grpc, registry_pb2, registry_pb2_grpc

Credentials = Sequence[tuple[str, str]]  # metadata pairs forwarded as they came
CREDENTIAL_HEADERS = ("authorization", "x-api-key")


def forwarded_credentials(context: grpc.ServicerContext) -> tuple[tuple[str, str], ...]:
    """The caller's API key headers, to send on with calls made on its behalf."""
    return tuple(
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if key in CREDENTIAL_HEADERS and isinstance(value, str)
    )


class DatasetLookup(Protocol):
    def get_version(
        self, dataset: str, version: str, credentials: Credentials
    ) -> intake_pb2.DatasetVersion: ...


class BaseModelLookup(Protocol):
    def get_base_model(self, name: str, credentials: Credentials) -> registry_pb2.BaseModel: ...


def training_inputs(
    datasets: DatasetLookup,
    base_models: BaseModelLookup,
    *,
    dataset: str,
    dataset_version: str,
    base_model: str,
    credentials: Credentials,
) -> tuple[intake_pb2.DatasetVersion, ArtifactRef, ArtifactRef]:
    """What a job trains on, asked with the caller's credentials: the dataset version
    (FailedPrecondition unless APPROVED), the base weights' ref and the data's ref."""
    version = datasets.get_version(dataset, dataset_version, credentials)
    if version.state != common_pb2.APPROVAL_STATE_APPROVED:
        state = common_pb2.ApprovalState.Name(version.state).removeprefix("APPROVAL_STATE_")
        raise FailedPrecondition(
            f"dataset version {dataset}@{dataset_version} is {state}: "
            f"only APPROVED versions can be trained on"
        )
    base = base_models.get_base_model(base_model, credentials)
    try:
        return (
            version,
            ArtifactRef.from_proto(base.weights),
            ArtifactRef.from_proto(version.manifest),
        )
    except ValueError as exc:
        raise FailedPrecondition(f"cannot locate the training inputs: {exc}") from None


class GrpcDatasetLookup:
    def __init__(self, target: str, *, timeout_s: float = 10.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._stub = intake_pb2_grpc.IntakeServiceStub(make_channel(target))

    def get_version(
        self, dataset: str, version: str, credentials: Credentials
    ) -> intake_pb2.DatasetVersion:
        try:
            return self._stub.GetVersion(
                intake_pb2.GetVersionRequest(dataset=dataset, version=version),
                metadata=list(credentials),
                timeout=self.timeout_s,
            )
        except grpc.RpcError as exc:
            raise _refusal(
                exc, "intake", self.target, "dataset version", f"{dataset}@{version}", "dataset"
            ) from None


class GrpcBaseModelLookup:
    def __init__(self, target: str, *, timeout_s: float = 10.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._stub = registry_pb2_grpc.RegistryServiceStub(make_channel(target))

    def get_base_model(self, name: str, credentials: Credentials) -> registry_pb2.BaseModel:
        try:
            return self._stub.GetBaseModel(
                registry_pb2.GetBaseModelRequest(name=name),
                metadata=list(credentials),
                timeout=self.timeout_s,
            )
        except grpc.RpcError as exc:
            raise _refusal(exc, "registry", self.target, "base model", name, "base_model") from None


def _refusal(
    exc: grpc.RpcError, service: str, target: str, what: str, name: str, field: str
) -> ServiceError:
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(what, name)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(field, f"{service} refused {what} {name!r}: {details}")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(f"{service} refused to show {what} {name!r}: {details}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(
            f"{service} did not accept your API key when asked for {what} {name!r} "
            f"({details}); the services must share one api_keys database"
        )
    return Unavailable(
        f"{service} at {target} could not answer for {what} {name!r}: {code.name} {details}"
    )
