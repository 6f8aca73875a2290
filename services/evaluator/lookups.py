"""What the evaluator asks the registry: a model version (RunEvaluation), a base model's
weights (adapters load onto them) and the tenant's aliases (which version is production).

GrpcRegistry.bound(credentials) is a posttrain.evaluator.Registry that makes its calls
with those credentials: an RPC's caller's own key, so the registry applies its tenant
rules to the caller; for model.registered, the evaluator's own key
(settings.registry_api_key). The registry's statuses come back as ServiceErrors naming
what was asked for. Tests stand in for the registry with any object of that shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from posttrain.rpc import make_channel
from posttrain.rpc.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from posttrain.v1 import common_pb2, registry_pb2, registry_pb2_grpc

Credentials = Sequence[tuple[str, str]]  # metadata pairs forwarded as they came
CREDENTIAL_HEADERS = ("authorization", "x-api-key")
ALIAS_PAGE = 500


def forwarded_credentials(context: grpc.ServicerContext) -> tuple[tuple[str, str], ...]:
    """The caller's API key headers, to send on with calls made on its behalf."""
    return tuple(
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if key in CREDENTIAL_HEADERS and isinstance(value, str)
    )


def own_credentials(api_key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


class GrpcRegistry:
    def __init__(self, target: str, *, timeout_s: float = 10.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._stub = registry_pb2_grpc.RegistryServiceStub(make_channel(target))

    def bound(self, credentials: Credentials) -> BoundRegistry:
        return BoundRegistry(self, tuple(credentials))


class BoundRegistry:
    def __init__(self, registry: GrpcRegistry, credentials: Credentials) -> None:
        self._registry = registry
        self._metadata = list(credentials)

    def _call(self, method: str, request, what: str, name: str, field: str):
        try:
            return getattr(self._registry._stub, method)(
                request, metadata=self._metadata, timeout=self._registry.timeout_s
            )
        except grpc.RpcError as exc:
            raise _refusal(exc, self._registry.target, what, name, field) from None

    def get_model_version(self, model_version_id: str) -> registry_pb2.ModelVersion:
        return self._call(
            "GetModelVersion",
            registry_pb2.GetModelVersionRequest(id=model_version_id),
            "model version",
            model_version_id,
            "model_version_id",
        )

    def get_base_model(self, name: str) -> registry_pb2.BaseModel:
        return self._call(
            "GetBaseModel",
            registry_pb2.GetBaseModelRequest(name=name),
            "base model",
            name,
            "base_model",
        )

    def list_aliases(self, tenant: str) -> list[registry_pb2.Alias]:
        found: list[registry_pb2.Alias] = []
        token = ""
        while True:
            page = self._call(
                "ListAliases",
                registry_pb2.ListAliasesRequest(
                    tenant=tenant,
                    page=common_pb2.PageRequest(page_size=ALIAS_PAGE, page_token=token),
                ),
                "aliases of tenant",
                tenant,
                "tenant",
            )
            found += page.aliases
            token = page.page.next_page_token
            if not token:
                return found


def _refusal(exc: grpc.RpcError, target: str, what: str, name: str, field: str) -> ServiceError:
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(what, name)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(field, f"the registry refused {what} {name!r}: {details}")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(f"the registry refused to show {what} {name!r}: {details}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(
            f"the registry did not accept the API key when asked for {what} {name!r} "
            f"({details}); the services must share one api_keys database"
        )
    return Unavailable(
        f"the registry at {target} could not answer for {what} {name!r}: {code.name} {details}"
    )
