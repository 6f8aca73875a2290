"""Correlation ids from client metadata into log records, and the log line formats."""

from __future__ import annotations

import io
import json
import logging
import re

import grpc
import pytest
from rpc_probe import get_alias

from posttrain.rpc import configure_logging, correlation_scope, current_correlation_id
from posttrain.rpc.logs import ContextFilter, JsonFormatter
from posttrain.v1 import registry_pb2, registry_pb2_grpc


@pytest.fixture
def records(caplog):
    """Log records of the probe handler, passed through the filter configure_logging uses."""
    context_filter = ContextFilter("probe-service")
    caplog.handler.addFilter(context_filter)  # pytest reuses this handler: remove it after
    caplog.set_level(logging.INFO, logger="tests.rpc.probe")
    yield lambda: [r for r in caplog.records if r.name == "tests.rpc.probe"]
    caplog.handler.removeFilter(context_filter)


def test_correlation_id_from_client_metadata_reaches_log_records(connect, admin_key, records):
    reply = get_alias(connect(admin_key), "log", metadata=[("x-correlation-id", "upload-7f3a")])
    assert reply.use_case == "upload-7f3a"  # the handler saw it too
    (record,) = records()
    assert record.correlation_id == "upload-7f3a"
    assert record.service == "probe-service"


def test_client_channel_forwards_the_current_correlation_id(connect, admin_key, records):
    channel = connect(admin_key)
    with correlation_scope("cli-run-1") as cid:
        assert current_correlation_id() == cid == "cli-run-1"
        assert get_alias(channel, "log").use_case == "cli-run-1"
    assert current_correlation_id() is None
    # Outside any scope the client makes a fresh id per call.
    first, second = get_alias(channel, "log").use_case, get_alias(channel, "log").use_case
    assert re.fullmatch(r"[0-9a-f]{32}", first) and first != second
    assert [r.correlation_id for r in records()] == ["cli-run-1", first, second]


def test_server_makes_an_id_when_the_caller_sends_none_or_a_bad_one(server, admin_key):

    # A bare channel, without the posttrain client interceptors.
    with grpc.insecure_channel(server.address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        auth = ("authorization", f"Bearer {admin_key}")
        bad_ids = ['id with spaces"quoted"', "x" * 200]
        for metadata in [[auth]] + [[auth, ("x-correlation-id", bad)] for bad in bad_ids]:
            reply = stub.GetAlias(registry_pb2.GetAliasRequest(use_case="ok"), metadata=metadata)
            assert re.fullmatch(r"[0-9a-f]{32}", reply.use_case)


def test_records_outside_an_rpc_get_a_dash():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    ContextFilter("svc").filter(record)
    assert (record.correlation_id, record.service) == ("-", "svc")


def test_json_lines_carry_context_extra_fields_and_tracebacks():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter("intake"))
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.rpc.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with correlation_scope("abc-123"):
            logger.warning("rows rejected: %d", 3, extra={"dataset": "faq"})
            try:
                raise ValueError("bad row")
            except ValueError:
                logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "rows rejected: 3"
    assert (first["service"], first["correlation_id"], first["level"]) == (
        "intake",
        "abc-123",
        "WARNING",
    )
    assert first["dataset"] == "faq"
    assert "ValueError: bad row" in second["exception"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_configure_logging(fmt, capsys):
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        configure_logging("trainer", "DEBUG", fmt)
        configure_logging("trainer", "INFO", fmt)  # again: replaces, does not add
        added = [h for h in root.handlers if h not in before]
        assert len(added) == 1 and root.level == logging.INFO
        with correlation_scope("run-9"):
            logging.getLogger("tests.rpc.configure").info("hello")
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(level)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    if fmt == "json":
        assert json.loads(line)["correlation_id"] == "run-9"
    else:
        assert line.endswith("INFO trainer [run-9] tests.rpc.configure: hello")
    with pytest.raises(ValueError):
        configure_logging("trainer", "INFO", "xml")
