"""MetricsInterceptor on a real server: every call counted by its final status and timed,
unary and streaming alike; and MetricsEndpoint serving them over HTTP."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import REGISTRY
from rpc_probe import free_port, get_alias, scrape_metrics
from test_rpc_errors import call_client_stream, call_server_stream

from posttrain.rpc import MetricsEndpoint
from posttrain.rpc.healthcheck import check as health_check

REGISTRY_SERVICE = "posttrain.v1.RegistryService"


def requests_total(service: str, method: str, code: str) -> float:
    labels = {"service": service, "method": method, "code": code}
    return REGISTRY.get_sample_value("posttrain_grpc_requests_total", labels) or 0.0


def timed_calls(service: str, method: str) -> float:
    labels = {"service": service, "method": method}
    return REGISTRY.get_sample_value("posttrain_grpc_request_seconds_count", labels) or 0.0


class Delta:
    """What the counters of (service, method) gained since construction."""

    def __init__(self, service: str, method: str, codes: tuple[str, ...]) -> None:
        self.key = (service, method)
        self.codes = codes
        self.before = {c: requests_total(service, method, c) for c in codes}
        self.timed_before = timed_calls(service, method)

    def counts(self) -> dict[str, float]:
        return {c: requests_total(*self.key, c) - self.before[c] for c in self.codes}

    def timed(self) -> float:
        return timed_calls(*self.key) - self.timed_before


def test_unary_calls_are_counted_by_status_code(connect, admin_key):
    delta = Delta(REGISTRY_SERVICE, "GetAlias", ("OK", "NOT_FOUND", "INTERNAL", "UNAUTHENTICATED"))
    channel = connect(admin_key)
    get_alias(channel, "ok")
    get_alias(channel, "ok")
    for command in ("raise:NotFound", "boom"):
        with pytest.raises(grpc.RpcError):
            get_alias(channel, command)
    with pytest.raises(grpc.RpcError):
        get_alias(connect())  # no API key: refused by auth, counted all the same
    assert delta.counts() == {"OK": 2, "NOT_FOUND": 1, "INTERNAL": 1, "UNAUTHENTICATED": 1}
    assert delta.timed() == 5


def test_streaming_calls_are_counted_when_the_stream_ends(connect, admin_key):
    channel = connect(admin_key)
    watch = Delta("posttrain.v1.TrainingService", "WatchJob", ("OK", "FAILED_PRECONDITION"))
    upload = Delta("posttrain.v1.IntakeService", "UploadDataset", ("OK", "ABORTED"))
    assert call_server_stream(channel, "ok")[-1].job_id == "second"
    with pytest.raises(grpc.RpcError):
        call_server_stream(channel, "raise:FailedPrecondition")  # after one message
    call_client_stream(channel, "ok")
    with pytest.raises(grpc.RpcError):
        call_client_stream(channel, "raise:Conflict")
    assert watch.counts() == {"OK": 1, "FAILED_PRECONDITION": 1}
    assert upload.counts() == {"OK": 1, "ABORTED": 1}
    assert (watch.timed(), upload.timed()) == (2, 2)


def test_health_checks_are_not_counted(server):
    before = REGISTRY.get_sample_value(
        "posttrain_grpc_requests_total",
        {"service": "grpc.health.v1.Health", "method": "Check", "code": "OK"},
    )
    assert health_check(f"127.0.0.1:{server.port}", "", timeout=5) == "SERVING"
    after = REGISTRY.get_sample_value(
        "posttrain_grpc_requests_total",
        {"service": "grpc.health.v1.Health", "method": "Check", "code": "OK"},
    )
    assert before is None and after is None


def test_metrics_endpoint_serves_the_counters_over_http(connect, admin_key):
    get_alias(connect(admin_key), "ok")
    port = free_port()
    endpoint = MetricsEndpoint("127.0.0.1", port).start()
    try:
        scraped = scrape_metrics(port)
    finally:
        endpoint.stop()
    labels = {"service": REGISTRY_SERVICE, "method": "GetAlias", "code": "OK"}
    key = ("posttrain_grpc_requests_total", tuple(sorted(labels.items())))
    assert scraped[key] == requests_total(**labels) >= 1
    with pytest.raises(OSError):  # stopped: the port answers no more
        scrape_metrics(port)
