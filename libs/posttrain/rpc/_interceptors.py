"""Plumbing under the server and client interceptors: wrapping a method handler's
behaviour, running it in its own contextvars context, and adding metadata to outgoing
calls. Knows nothing of auth, errors or logging.
"""

from __future__ import annotations

import collections
import contextvars
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc

# Health checks and reflection answer anyone and hold no business logic, so the posttrain
# interceptors leave them alone (wrapping health's Watch would also drop the attribute
# that lets grpc serve it without holding a worker thread per watcher).
INFRASTRUCTURE_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

Behavior = Callable[..., Any]
# (behaviour, response_streaming) -> behaviour with the same calling convention
BehaviorWrapper = Callable[[Behavior, bool], Behavior]
Setup = Callable[[Any, grpc.ServicerContext], None]


def service_of(method: str) -> str:
    """'/posttrain.v1.IntakeService/GetDataset' -> 'posttrain.v1.IntakeService'."""
    return method.lstrip("/").split("/", 1)[0]


def is_infrastructure(method: str) -> bool:
    return service_of(method) in INFRASTRUCTURE_SERVICES


def metadata_value(metadata: Sequence[tuple[str, Any]] | None, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v if isinstance(v, str) else None
    return None


def wrap_handler(
    handler: grpc.RpcMethodHandler | None,
    wrap: BehaviorWrapper,
    *,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler | None:
    """A copy of `handler` whose behaviour is `wrap(behaviour, response_streaming)` (and
    whose request deserializer is `request_deserializer`, when given)."""
    if handler is None:
        return None
    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
        ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
        ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
        ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
    )
    for attr, make_handler, response_streaming in kinds:
        behavior = getattr(handler, attr)
        if behavior is not None:
            return make_handler(
                wrap(behavior, response_streaming),
                request_deserializer=request_deserializer or handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


def in_own_context(setup: Setup, behavior: Behavior, response_streaming: bool) -> Behavior:
    """`behavior` run in a fresh copy of the contextvars context, after `setup` ran there.

    grpc reuses its worker threads, so a contextvar set straight on the thread would leak
    into the next RPC it serves (a principal, say). Each RPC gets its own context instead,
    and every step of a response stream runs in that same context.
    """
    if not response_streaming:

        def unary_response(request: Any, context: grpc.ServicerContext) -> Any:
            return contextvars.copy_context().run(
                _setup_then_call, setup, behavior, request, context
            )

        return unary_response

    def streaming_response(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        ctx = contextvars.copy_context()
        responses = ctx.run(_setup_then_call, setup, behavior, request, context)
        return _iterate_in(ctx, iter(responses))

    return streaming_response


def _setup_then_call(setup: Setup, behavior: Behavior, request: Any, context: Any) -> Any:
    setup(request, context)
    return behavior(request, context)


def _iterate_in(ctx: contextvars.Context, responses: Iterator[Any]) -> Iterator[Any]:
    while True:
        try:
            item = ctx.run(next, responses)
        except StopIteration:
            return
        yield item


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class MetadataClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the pairs `metadata()` returns (asked at each call) to every outgoing call;
    a key the caller already set explicitly wins."""

    def __init__(self, metadata: Callable[[], Sequence[tuple[str, str]]]) -> None:
        self._metadata = metadata

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        existing = list(details.metadata or ())
        present = {k for k, _ in existing}
        merged = existing + [(k, v) for k, v in self._metadata() if k not in present]
        return _CallDetails(
            details.method,
            details.timeout,
            merged,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)
