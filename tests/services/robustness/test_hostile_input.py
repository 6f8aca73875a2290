"""Bad input on every gRPC method of every service, found from the protos (a new RPC is
covered the day it is added): hypothesis fills each request with hostile values (huge and
empty strings, path-like names, NUL bytes and odd unicode, negative and huge numbers,
enum values that do not exist, nested messages and lists) and the server must answer
with a proper status, never UNKNOWN or INTERNAL, stay healthy, and leave no row or object
behind when it refuses. Bytes that are not a protobuf message must get INVALID_ARGUMENT.
"""

from __future__ import annotations

import math

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor as F
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from robustness_helpers import Fleet, all_methods, method_id

METHODS = all_methods()
# Statuses that mean the server did not know what happened: a bug, whatever the input.
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}
NEVER_ON_GARBAGE = NEVER | {grpc.StatusCode.UNIMPLEMENTED}

HOSTILE_TEXT = [
    "",
    " ",
    "../x",
    "../../etc/passwd",
    "a/../../b",
    "/abs/path",
    "..",
    "a\x00b",
    "\x00",
    "x" * 100_000,
    "\u202egnp.exe",
    "😀" * 50,
    "名前",
    "ﬀ\u0301",
    "%2e%2e%2f",
    "*",
    "' OR 1=1 --",
    "a:b:c",
    ":v1",
    "name:v-1",
    "\n\r\t",
    "acme",
    "globex",
]
INT_EDGES = [0, 1, -1, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63), 10**9]
UINT_EDGES = [0, 1, 2**32 - 1, 2**64 - 1]
FLOAT_EDGES = [0.0, -1.0, 1e308, -1e308, math.inf, -math.inf, math.nan, 1e-320]
SIGNED32 = {F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32}
SIGNED64 = {F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64}
UNSIGNED = {F.TYPE_UINT32, F.TYPE_FIXED32, F.TYPE_UINT64, F.TYPE_FIXED64}


def _scalar(field: F) -> st.SearchStrategy:
    t = field.type
    if t == F.TYPE_STRING:
        return st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=40))
    if t == F.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return st.sampled_from(FLOAT_EDGES)
    if t == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-5, 10_000))
    if t in SIGNED32:
        return st.sampled_from([v for v in INT_EDGES if -(2**31) <= v < 2**31])
    if t in SIGNED64:
        return st.sampled_from(INT_EDGES)
    if t in UNSIGNED:
        limit = 2**32 if t in (F.TYPE_UINT32, F.TYPE_FIXED32) else 2**64
        return st.sampled_from([v for v in UINT_EDGES if v < limit])
    raise AssertionError(f"no strategy for field type {t} of {field.full_name}")


@st.composite
def messages(draw, descriptor, depth: int = 0):
    """A message of `descriptor` with a random subset of its fields set to hostile values."""
    message = GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.type == F.TYPE_MESSAGE:
            if depth >= 2:
                continue
            entry = field.message_type
            if entry.GetOptions().map_entry:
                key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
                if value_field.type == F.TYPE_MESSAGE:
                    continue
                items = draw(st.dictionaries(_scalar(key_field), _scalar(value_field), max_size=3))
                getattr(message, field.name).update(items)
                continue
            if field.is_repeated:
                for item in draw(st.lists(messages(entry, depth + 1), max_size=2)):
                    getattr(message, field.name).add().CopyFrom(item)
            else:
                getattr(message, field.name).CopyFrom(draw(messages(entry, depth + 1)))
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(_scalar(field), max_size=3)))
        else:
            setattr(message, field.name, draw(_scalar(field)))
    return message


def call(channel: grpc.Channel, service: str, method, payload: bytes, key: str | None):
    """One call with an already serialized request; the status code it ended with."""
    path = f"/{service}/{method.name}"
    metadata = [("authorization", f"Bearer {key}")] if key else []
    kwargs = dict(request_serializer=None, response_deserializer=None)
    timeout = 20.0
    try:
        if method.client_streaming and method.server_streaming:
            list(
                channel.stream_stream(path, **kwargs)(
                    iter([payload]), timeout=3.0, metadata=metadata
                )
            )
        elif method.client_streaming:
            channel.stream_unary(path, **kwargs)(
                iter([payload]), timeout=timeout, metadata=metadata
            )
        elif method.server_streaming:
            # Watch-style streams go on while nothing happens: read for a moment only.
            stream = channel.unary_stream(path, **kwargs)(payload, timeout=3.0, metadata=metadata)
            for _ in stream:
                pass
        else:
            channel.unary_unary(path, **kwargs)(payload, timeout=timeout, metadata=metadata)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def assert_healthy(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def channel(fleet: Fleet) -> grpc.Channel:
    return fleet.channel()


@pytest.mark.parametrize("entry", METHODS, ids=[method_id(m) for m in METHODS])
def test_hostile_arguments_get_a_proper_status_and_no_partial_write(fleet, channel, entry):
    service, method = entry
    admin = fleet.keys["admin"]  # the widest caller: hostile input reaches the logic

    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request=messages(method.input_type))
    def check(request):
        rows, objects = fleet.row_counts(), fleet.objects()
        code, details = call(channel, service, method, request.SerializeToString(), admin)
        assert code not in NEVER, f"{method.name}({request!s:.300}) -> {code.name}: {details}"
        if code != grpc.StatusCode.OK and code != grpc.StatusCode.DEADLINE_EXCEEDED:
            assert fleet.row_counts() == rows, f"{method.name} refused ({code.name}) but wrote rows"
            assert fleet.objects() == objects, f"{method.name} refused but left objects"

    check()
    assert_healthy(channel)


# Bytes no protobuf parser accepts: a truncated varint, a length running past the end,
# a reserved wire type, a field number of 0.
GARBAGE = [b"\x08", b"\x0a\xff\xff\xff\xff\x0f", b"\x0f", b"\x00\x00", b"\xff" * 16]


def _not_a_message(data: bytes, descriptor) -> bool:
    try:
        GetMessageClass(descriptor).FromString(data)
    except DecodeError:
        return True
    return False


@pytest.mark.parametrize("entry", METHODS, ids=[method_id(m) for m in METHODS])
def test_bytes_that_are_not_a_message_get_invalid_argument(fleet, channel, entry):
    service, method = entry
    payloads = [g for g in GARBAGE if _not_a_message(g, method.input_type)]
    assert payloads
    rows = fleet.row_counts()
    for payload in payloads:
        for key in (fleet.keys["admin"], None):
            code, details = call(channel, service, method, payload, key)
            assert code not in NEVER_ON_GARBAGE, f"{method.name}: {code.name}: {details}"
            if key is not None:
                assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{code.name}: {details}"
    assert fleet.row_counts() == rows
    assert_healthy(channel)
