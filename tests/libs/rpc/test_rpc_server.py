"""GrpcServer over real loopback connections: health, reflection, size limits, TLS,
ports and graceful shutdown."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from rpc_probe import INTAKE, REGISTRY, TRAINING, get_alias, grpc_settings, probe_servicers

from posttrain.rpc import GrpcServer, make_channel
from posttrain.rpc.healthcheck import check
from posttrain.v1 import registry_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_check(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_serving_for_server_and_each_service(server, connect):
    channel = connect()  # no API key: health is open
    for name in ["", REGISTRY, TRAINING, INTAKE]:
        assert health_check(channel, name) == SERVING
    with pytest.raises(grpc.RpcError) as err:
        health_check(channel, "posttrain.v1.NoSuchService")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_not_serving_before_start_and_during_shutdown():
    server = GrpcServer(grpc_settings(), probe_servicers(), service_names=[REGISTRY])
    assert (
        server.health.Check(health_pb2.HealthCheckRequest(service=""), None).status == NOT_SERVING
    )
    server.start()
    channel = make_channel(server.address)
    # A watch opened while serving sees the switch to NOT_SERVING when shutdown begins.
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=REGISTRY), timeout=10
    )
    assert next(watch).status == SERVING
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 1.0})
    stopper.start()
    assert next(watch).status == NOT_SERVING
    stopper.join(10)
    assert server.wait(0)
    channel.close()


def test_healthcheck_module_exit_codes(server):
    ok = subprocess.run(
        [sys.executable, "-m", "posttrain.rpc.healthcheck", "--port", str(server.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert check(server.address, REGISTRY) == "SERVING"
    assert check(server.address, "posttrain.v1.Nope") == "NOT_FOUND"
    server.stop(grace=0)
    assert check(server.address, timeout=1) == "UNAVAILABLE"


def test_reflection_lists_registered_services(server, connect):
    services = ProtoReflectionDescriptorDatabase(connect()).get_services()
    assert {REGISTRY, TRAINING, INTAKE, "grpc.health.v1.Health"} <= set(services)


def test_port_zero_binds_a_free_port_and_a_busy_port_fails(server):
    assert server.port > 0
    with pytest.raises(OSError):
        GrpcServer(grpc_settings(), [], service_names=[], port=server.port)


def test_oversized_request_is_resource_exhausted(start_server, admin_key):
    server = start_server(max_message_bytes=4096)
    # The client may send more than the server takes: the server must refuse it.
    with make_channel(server.address, api_key=admin_key, max_message_bytes=1 << 20) as channel:
        assert get_alias(channel, "ok")  # a small message passes
        with pytest.raises(grpc.RpcError) as err:
            get_alias(channel, "x" * 10_000)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_oversized_response_is_refused_by_the_client(server, admin_key):
    with make_channel(server.address, api_key=admin_key, max_message_bytes=100) as channel:
        with pytest.raises(grpc.RpcError) as err:
            # the reply carries the correlation id (32 chars) and the principal: > 100 bytes
            get_alias(channel, "ok", metadata=[("x-correlation-id", "c" * 90)])
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def _self_signed_cert(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_with_self_signed_cert(start_server, admin_key, tmp_path):
    cert, key = _self_signed_cert(tmp_path)
    server = start_server(tls_cert_file=str(cert), tls_key_file=str(key))
    assert server.tls
    target = f"localhost:{server.port}"
    with make_channel(target, api_key=admin_key, tls_ca_file=str(cert)) as channel:
        assert get_alias(channel, "whoami").updated_by == "root"
    with make_channel(target, api_key=admin_key) as plaintext:
        with pytest.raises(grpc.RpcError) as err:
            get_alias(plaintext, "ok", wait_for_ready=False)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert check(target, tls_ca_file=str(cert)) == "SERVING"


def test_tls_needs_cert_and_key(tmp_path):
    with pytest.raises(ValueError, match="tls_cert_file and tls_key_file"):
        GrpcServer(grpc_settings(tls_cert_file=str(tmp_path / "c.pem")), [], service_names=[])


def test_graceful_shutdown_lets_in_flight_rpc_finish(server, connect, admin_key):
    channel = connect(admin_key)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(get_alias, channel, "sleep:1.5")
        time.sleep(0.3)  # the slow call is now in its handler
        started = time.monotonic()
        server.stop(grace=10)
        stopped_after = time.monotonic() - started
        assert slow.result(timeout=10).use_case  # finished normally, with its correlation id
    # stop waited for the RPC (about 1.2 s more), not the whole grace period
    assert 0.8 < stopped_after < 8
    with pytest.raises(grpc.RpcError) as err:
        get_alias(channel, "ok")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_shutdown_cancels_rpcs_that_outlast_the_grace(server, connect, admin_key):
    channel = connect(admin_key)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(get_alias, channel, "sleep:3")
        time.sleep(0.3)
        started = time.monotonic()
        server.stop(grace=0.5)
        assert time.monotonic() - started < 4
        with pytest.raises(grpc.RpcError) as err:
            slow.result(timeout=10)
    assert err.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


def test_unregistered_method_is_unimplemented(server, connect, admin_key):
    channel = connect(admin_key)
    call = channel.unary_unary(
        "/posttrain.v1.RegistryService/NoSuchMethod",
        request_serializer=registry_pb2.GetAliasRequest.SerializeToString,
        response_deserializer=registry_pb2.Alias.FromString,
    )
    with pytest.raises(grpc.RpcError) as err:
        call(registry_pb2.GetAliasRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


SERVE_FOREVER = """
import sys
from rpc_probe import REGISTRY, grpc_settings, probe_servicers
from posttrain.rpc import GrpcServer, configure_logging

configure_logging("probe")
server = GrpcServer(grpc_settings(grace_seconds=10), probe_servicers(), service_names=[REGISTRY])
server.start()
print(server.port, flush=True)
server.serve_forever()
print("clean exit", flush=True)
"""


def test_sigterm_drains_in_flight_rpc_then_exits_zero():
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_FOREVER],
        cwd=Path(__file__).parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(proc.stdout.readline())
        with make_channel(f"127.0.0.1:{port}") as channel, ThreadPoolExecutor(1) as pool:
            slow = pool.submit(get_alias, channel, "sleep:1.5")
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            assert slow.result(timeout=10) is not None
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "clean exit" in out
    assert "SIGTERM received" in err
