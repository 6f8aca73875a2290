"""The gRPC layer every service shares: server, API-key auth, error mapping, correlation
ids and logging, Prometheus metrics, client channels, and the common service start-up.

It knows nothing of any one service's API; servicers live in services/ and call library
cores that know nothing of gRPC.
"""

from posttrain.rpc.auth import (
    AUTH_MIGRATIONS,
    ROLES,
    ApiKeyInfo,
    ApiKeyStore,
    AuthInterceptor,
    AuthSettings,
    Principal,
    Role,
    current_principal,
    require_principal,
    require_role,
    seed_bootstrap_admin_key,
)
from posttrain.rpc.client import make_channel
from posttrain.rpc.errors import (
    AlreadyExists,
    Conflict,
    ErrorInterceptor,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
    field_violations,
)
from posttrain.rpc.logs import (
    CorrelationIdInterceptor,
    configure_logging,
    correlation_scope,
    current_correlation_id,
)
from posttrain.rpc.metrics import MetricsEndpoint, MetricsInterceptor
from posttrain.rpc.server import GrpcServer
from posttrain.rpc.service import RpcServiceSettings, service_main, standard_interceptors

__all__ = [
    "AUTH_MIGRATIONS",
    "ROLES",
    "AlreadyExists",
    "ApiKeyInfo",
    "ApiKeyStore",
    "AuthInterceptor",
    "AuthSettings",
    "Conflict",
    "CorrelationIdInterceptor",
    "ErrorInterceptor",
    "FailedPrecondition",
    "FieldViolation",
    "GrpcServer",
    "InvalidArgument",
    "MetricsEndpoint",
    "MetricsInterceptor",
    "NotFound",
    "PermissionDenied",
    "Principal",
    "ResourceExhausted",
    "Role",
    "RpcServiceSettings",
    "ServiceError",
    "Unauthenticated",
    "Unavailable",
    "configure_logging",
    "correlation_scope",
    "current_correlation_id",
    "current_principal",
    "field_violations",
    "make_channel",
    "require_principal",
    "require_role",
    "seed_bootstrap_admin_key",
    "service_main",
    "standard_interceptors",
]
