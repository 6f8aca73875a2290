"""ErrorInterceptor: each error class reaches the client as its status, in unary, server-
streaming and client-streaming RPCs; unexpected errors become INTERNAL without their text."""

from __future__ import annotations

import logging

import grpc
import pytest
from rpc_probe import ERRORS, SECRET_TEXT, get_alias

from posttrain.rpc import FieldViolation, InvalidArgument, field_violations
from posttrain.rpc.errors import FIELD_METADATA_KEY
from posttrain.v1 import intake_pb2, intake_pb2_grpc, training_pb2, training_pb2_grpc


def call_unary(channel, command):
    return get_alias(channel, command)


def call_server_stream(channel, command):
    stub = training_pb2_grpc.TrainingServiceStub(channel)
    replies = stub.WatchJob(training_pb2.GetJobRequest(job_id=command), timeout=10)
    first = next(replies)
    assert first.job_id == "first"  # the error comes after a message was streamed
    return list(replies)


def call_client_stream(channel, command):
    stub = intake_pb2_grpc.IntakeServiceStub(channel)
    requests = [
        intake_pb2.UploadDatasetRequest(metadata=intake_pb2.UploadMetadata(dataset="d")),
        intake_pb2.UploadDatasetRequest(chunk=b"ok"),
        intake_pb2.UploadDatasetRequest(chunk=command.encode()),
    ]
    return stub.UploadDataset(iter(requests), timeout=10)


CALLS = [call_unary, call_server_stream, call_client_stream]


@pytest.fixture
def channel(connect, admin_key):
    return connect(admin_key)


@pytest.mark.parametrize("call", CALLS, ids=lambda c: c.__name__)
def test_calls_succeed(channel, call):
    call(channel, "ok")


@pytest.mark.parametrize("call", CALLS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", sorted(ERRORS))
def test_error_maps_to_status(channel, call, name):
    exc, code = ERRORS[name]
    with pytest.raises(grpc.RpcError) as err:
        call(channel, f"raise:{name}")
    assert err.value.code() == code
    assert err.value.details() == str(exc)


@pytest.mark.parametrize("call", CALLS, ids=lambda c: c.__name__)
def test_invalid_argument_names_the_field(channel, call):
    with pytest.raises(grpc.RpcError) as err:
        call(channel, "raise:InvalidArgument")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'messages[2].role'" in err.value.details()
    assert "must be user, assistant or system" in err.value.details()
    assert (FIELD_METADATA_KEY, "messages[2].role") in tuple(err.value.trailing_metadata())
    assert field_violations(err.value) == [
        FieldViolation("messages[2].role", "must be user, assistant or system")
    ]


def test_several_field_violations_travel_with_rows_and_codes(channel):
    with pytest.raises(grpc.RpcError) as err:
        get_alias(channel, "raise:InvalidArguments")
    details = err.value.details()
    assert details.startswith("2 invalid arguments:")
    assert "'learning_rate'" in details and "row 7 'messages[0].content'" in details
    assert field_violations(err.value) == [
        FieldViolation("learning_rate", "must be > 0", code="out_of_range"),
        FieldViolation("messages[0].content", "empty", code="missing_field", row=7),
    ]


@pytest.mark.parametrize("call", CALLS, ids=lambda c: c.__name__)
def test_unexpected_error_is_internal_without_its_text(channel, call, caplog):
    with caplog.at_level(logging.ERROR, logger="posttrain.rpc.errors"):
        with pytest.raises(grpc.RpcError) as err:
            call(channel, "boom")
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert SECRET_TEXT not in err.value.details()
    assert "RuntimeError" not in err.value.details()
    trailing = dict(err.value.trailing_metadata())
    correlation_id = trailing["x-correlation-id"]
    assert correlation_id in err.value.details()
    # The whole story is in the log, under the same correlation id.
    (record,) = [r for r in caplog.records if r.exc_info]
    assert correlation_id in record.getMessage()
    assert SECRET_TEXT in str(record.exc_info[1])


def test_internal_error_quotes_the_callers_correlation_id(channel):
    with pytest.raises(grpc.RpcError) as err:
        get_alias(channel, "boom", metadata=[("x-correlation-id", "req-42")])
    assert err.value.details() == "internal error (correlation id req-42)"


@pytest.mark.parametrize("call", CALLS, ids=lambda c: c.__name__)
def test_explicit_abort_passes_through(channel, call):
    with pytest.raises(grpc.RpcError) as err:
        call(channel, "abort")
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert err.value.details() == "explicit abort"


def test_generated_unimplemented_default_stays_unimplemented(channel, caplog):
    stub = training_pb2_grpc.TrainingServiceStub(channel)
    with caplog.at_level(logging.ERROR):
        with pytest.raises(grpc.RpcError) as err:
            stub.GetJob(training_pb2.GetJobRequest(job_id="j"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_invalid_argument_needs_something_to_say():
    with pytest.raises(ValueError):
        InvalidArgument()
    many = InvalidArgument(violations=[FieldViolation(f"f{i}", "bad") for i in range(8)])
    assert str(many).endswith("and 3 more")
    assert many.field == "f0"
