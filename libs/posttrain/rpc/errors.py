"""The errors service and library code raise, and the interceptor that turns them into
gRPC statuses.

Code raises `NotFound("dataset", name)` or `InvalidArgument("messages[2].role", "...")`
and never touches a status code; ErrorInterceptor maps each class to its code, names the
field in the message, and attaches each FieldViolation in the trailing metadata (as
`posttrain-field` and as a serialized posttrain.v1.FieldViolation). Any other exception
becomes INTERNAL with a correlation id; its text and traceback go to the log only, since
they may hold secrets or request data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

import grpc

from posttrain.rpc._interceptors import is_infrastructure, wrap_handler
from posttrain.rpc.logs import CORRELATION_ID_HEADER, current_correlation_id, new_correlation_id
from posttrain.v1 import common_pb2

log = logging.getLogger(__name__)

FIELD_METADATA_KEY = "posttrain-field"
FIELD_VIOLATION_METADATA_KEY = "posttrain-field-violation-bin"
_MAX_VIOLATIONS_IN_MESSAGE = 5


@dataclass(frozen=True)
class FieldViolation:
    """One thing wrong with one field (of a request, or of a row of uploaded data)."""

    field: str  # dotted path, e.g. "messages[2].role"
    message: str  # what is wrong, for a person
    code: str = "invalid"  # machine-readable reason, e.g. "missing_field"
    row: int = 0  # 1-based row of uploaded data; 0 when not about a row

    def describe(self) -> str:
        where = f"row {self.row} " if self.row else ""
        return f"{where}{self.field!r}: {self.message}" if self.field else f"{where}{self.message}"

    def to_proto(self) -> common_pb2.FieldViolation:
        return common_pb2.FieldViolation(
            row=self.row, field=self.field, code=self.code, message=self.message
        )

    @classmethod
    def from_proto(cls, msg: common_pb2.FieldViolation) -> FieldViolation:
        return cls(field=msg.field, message=msg.message, code=msg.code, row=msg.row)


class ServiceError(Exception):
    """Base of the errors a caller is meant to see; `code` is the gRPC status it maps to."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def trailing_metadata(self) -> list[tuple[str, str | bytes]]:
        return []


class InvalidArgument(ServiceError):
    """A request argument is wrong; names the field(s). Give `field` and `message` for one
    violation, `violations` for several (both may be combined)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(
        self, field: str = "", message: str = "", *, violations: Sequence[FieldViolation] = ()
    ) -> None:
        found = ([FieldViolation(field, message)] if field or message else []) + list(violations)
        if not found:
            raise ValueError("InvalidArgument needs a field and message, or violations")
        self.violations: tuple[FieldViolation, ...] = tuple(found)
        super().__init__(_describe(self.violations))

    @property
    def field(self) -> str:
        return self.violations[0].field

    def trailing_metadata(self) -> list[tuple[str, str | bytes]]:
        pairs: list[tuple[str, str | bytes]] = []
        for v in self.violations:
            if v.field:
                pairs.append((FIELD_METADATA_KEY, _printable_ascii(v.field)))
            pairs.append((FIELD_VIOLATION_METADATA_KEY, v.to_proto().SerializeToString()))
        return pairs


def _describe(violations: Sequence[FieldViolation]) -> str:
    if len(violations) == 1:
        return f"invalid argument {violations[0].describe()}"
    shown = "; ".join(v.describe() for v in violations[:_MAX_VIOLATIONS_IN_MESSAGE])
    more = len(violations) - _MAX_VIOLATIONS_IN_MESSAGE
    return f"{len(violations)} invalid arguments: {shown}" + (
        f"; and {more} more" if more > 0 else ""
    )


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, what: str, id: str) -> None:
        self.what, self.id = what, id
        super().__init__(f"{what} {id!r} not found")


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS

    def __init__(self, what: str, id: str) -> None:
        self.what, self.id = what, id
        super().__init__(f"{what} {id!r} already exists")


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED

    def __init__(self, message: str = "a valid API key is required") -> None:
        super().__init__(message)


class FailedPrecondition(ServiceError):
    """The system is not in a state that allows this (e.g. approving a rejected dataset)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Conflict(ServiceError):
    """A concurrent change won (stale revision, lost race): retrying may succeed."""

    code = grpc.StatusCode.ABORTED


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    """A dependency is down or the service is shutting down: retry later."""

    code = grpc.StatusCode.UNAVAILABLE


def field_violations(error: grpc.RpcError) -> list[FieldViolation]:
    """The field violations an INVALID_ARGUMENT error carried, for clients."""
    found = []
    for key, value in _trailing(error):
        if key == FIELD_VIOLATION_METADATA_KEY:
            found.append(FieldViolation.from_proto(common_pb2.FieldViolation.FromString(value)))
    return found


def _trailing(error: grpc.RpcError) -> Sequence[tuple[str, Any]]:
    trailing = getattr(error, "trailing_metadata", None)
    return (trailing() if callable(trailing) else None) or ()


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps exceptions raised by handlers (unary, and while streaming either way) to
    statuses. Explicit statuses a handler set itself (context.abort, set_code) pass through."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or is_infrastructure(handler_call_details.method):
            return handler
        method = handler_call_details.method
        checked = _checked_stream if handler.request_streaming else _checked

        def wrap(behavior, response_streaming: bool):
            if response_streaming:

                def streaming_response(
                    request: Any, context: grpc.ServicerContext
                ) -> Iterator[Any]:
                    try:
                        yield from behavior(checked(request), context)
                    except Exception as exc:
                        abort_with(exc, context, method)

                return streaming_response

            def unary_response(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return behavior(checked(request), context)
                except Exception as exc:
                    abort_with(exc, context, method)

            return unary_response

        return wrap_handler(
            handler, wrap, request_deserializer=_tolerant(handler.request_deserializer)
        )


# grpc answers INTERNAL ("Exception deserializing request!") when a request's bytes do
# not parse; the deserializer hands this marker on instead, and _checked makes it
# INVALID_ARGUMENT like any other bad argument.
_MALFORMED = object()
_MALFORMED_MESSAGE = "the request is not a valid protobuf message for this method"


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # noqa: BLE001 - any parse failure is the caller's bad bytes
            return _MALFORMED

    return parse


def _checked(request: Any) -> Any:
    if request is _MALFORMED:
        raise InvalidArgument("request", _MALFORMED_MESSAGE)
    return request


def _checked_stream(requests: Iterator[Any]) -> Iterator[Any]:
    for request in requests:
        yield _checked(request)


def abort_with(exc: Exception, context: grpc.ServicerContext, method: str) -> NoReturn:
    """Ends the RPC with the status `exc` stands for; always raises."""
    if isinstance(exc, ServiceError):
        log.info("%s -> %s: %s", method, exc.code.name, exc.message)
        _add_trailing_metadata(context, exc.trailing_metadata())
        context.abort(exc.code, exc.message)
    chosen = context.code()
    if chosen is not None and chosen != grpc.StatusCode.OK:
        # The handler picked a status itself (context.abort, or the generated servicer's
        # UNIMPLEMENTED default): keep it, and spare the log grpc's traceback for it.
        details = context.details()
        text = details.decode("utf-8", "replace") if isinstance(details, bytes) else details or ""
        context.abort(chosen, text)
    if not context.is_active():
        raise exc  # the client is gone (cancelled, deadline passed): nobody to answer
    cid = current_correlation_id() or new_correlation_id()
    log.error("unhandled error in %s (correlation id %s)", method, cid, exc_info=exc)
    _add_trailing_metadata(context, [(CORRELATION_ID_HEADER, cid)])
    context.abort(grpc.StatusCode.INTERNAL, f"internal error (correlation id {cid})")
    raise AssertionError("unreachable: context.abort raises")


def _add_trailing_metadata(context: grpc.ServicerContext, pairs: list[tuple[str, Any]]) -> None:
    if pairs:
        existing = tuple(context.trailing_metadata() or ())
        context.set_trailing_metadata(existing + tuple(pairs))


def _printable_ascii(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)
