"""One Component per server of the local stack: how to start it and how to tell it is up."""

from __future__ import annotations

import json
import socket
import struct
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from posttrain.stack import binaries

if TYPE_CHECKING:
    from posttrain.stack.manager import LocalStack


@dataclass(frozen=True)
class Component:
    name: str
    description: str
    argv: Callable[[LocalStack], list[str]]
    env: Callable[[LocalStack], dict[str, str]]
    is_healthy: Callable[[LocalStack], bool]
    endpoint: Callable[[LocalStack], str]
    prepare: Callable[[LocalStack], None] = lambda stack: None
    start_timeout_s: float = 60.0
    stop_timeout_s: float = 15.0


def _tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback only)
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


# ---------------------------------------------------------------- Kafka protocol (Tansu)


def _kafka_argv(stack: LocalStack) -> list[str]:
    url = f"tcp://{stack.host}:{stack.ports.kafka}"
    return [
        str(binaries.tansu_binary()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def _kafka_healthy(stack: LocalStack) -> bool:
    """An ApiVersions round trip on a raw socket with a timeout: the broker must answer
    the Kafka protocol, and a port held by something silent must not hang the check (a
    client library's bootstrap waits for ever there)."""
    correlation_id = 0x5057
    client_id = b"posttrain-health"
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((stack.host, stack.ports.kafka), timeout=2.0) as sock:
            sock.settimeout(2.0)
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(sock, 10)  # size, correlation id, error code
    except OSError:
        return False
    _, echoed, error_code = struct.unpack(">iih", header)
    return echoed == correlation_id and error_code == 0


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


KAFKA = Component(
    name="kafka",
    description="Tansu (Kafka wire protocol), memory storage",
    argv=_kafka_argv,
    env=lambda stack: {"RUST_LOG": "warn"},
    is_healthy=_kafka_healthy,
    endpoint=lambda stack: stack.kafka_bootstrap,
    start_timeout_s=30.0,
)

# ---------------------------------------------------------------- S3 (SeaweedFS)


def _s3_prepare(stack: LocalStack) -> None:
    for sub in ("data", "logs", "tmp"):
        (stack.component_dir("s3") / sub).mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "admin",
                "credentials": [
                    {"accessKey": stack.s3_access_key, "secretKey": stack.s3_secret_key}
                ],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    config = stack.component_dir("s3") / "s3.json"
    config.write_text(json.dumps(identities))
    config.chmod(0o600)


def _s3_argv(stack: LocalStack) -> list[str]:
    d = stack.component_dir("s3")
    p = stack.ports
    # Every port is explicit (gRPC ones too: by default they are port+10000), so that two
    # stacks on one machine never clash.
    return [
        str(binaries.weed_binary()),
        f"-logdir={d / 'logs'}",
        "mini",
        f"-dir={d / 'data'}",
        f"-ip={stack.host}",
        f"-ip.bind={stack.host}",
        f"-s3.port={p.s3}",
        f"-s3.port.grpc={p.s3_grpc}",
        f"-master.port={p.s3_master}",
        f"-master.port.grpc={p.s3_master_grpc}",
        f"-volume.port={p.s3_volume}",
        f"-volume.port.grpc={p.s3_volume_grpc}",
        f"-filer.port={p.s3_filer}",
        f"-filer.port.grpc={p.s3_filer_grpc}",
        f"-admin.port={p.s3_admin}",
        f"-admin.port.grpc={p.s3_admin_grpc}",
        f"-s3.config={d / 's3.json'}",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
    ]


def _s3_healthy(stack: LocalStack) -> bool:
    if not _tcp_open(stack.host, stack.ports.s3):
        return False
    import urllib3
    from minio import Minio
    from minio.error import S3Error

    client = Minio(
        f"{stack.host}:{stack.ports.s3}",
        access_key=stack.s3_access_key,
        secret_key=stack.s3_secret_key,
        secure=False,
        # Bounded: the client's default read timeout is minutes, too long for a probe.
        http_client=urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=3), retries=False),
    )
    try:
        client.list_buckets()
        return True
    except (S3Error, OSError, ValueError, Exception):  # noqa: BLE001 - any failure = not up yet
        return False


S3 = Component(
    name="s3",
    description="SeaweedFS with its S3 gateway",
    prepare=_s3_prepare,
    argv=_s3_argv,
    # SeaweedFS always puts its gRPC unix sockets in the temp folder: a private one per stack.
    env=lambda stack: {"TMPDIR": str(stack.component_dir("s3") / "tmp")},
    is_healthy=_s3_healthy,
    endpoint=lambda stack: f"http://{stack.host}:{stack.ports.s3}",
    start_timeout_s=60.0,
    # Its volume server sometimes ignores SIGTERM after heavy write/delete traffic (seen
    # here): don't make every `down` wait long for it before the SIGKILL.
    stop_timeout_s=5.0,
)

# ---------------------------------------------------------------- Triton


def _triton_prepare(stack: LocalStack) -> None:
    d = stack.component_dir("triton")
    stack.triton_model_repository.mkdir(parents=True, exist_ok=True)
    binaries.assemble_triton_backends(d / "backends")


def _triton_argv(stack: LocalStack) -> list[str]:
    d = stack.component_dir("triton")
    p = stack.ports
    return [
        str(binaries.tritonserver_binary()),
        f"--model-repository={stack.triton_model_repository}",
        f"--backend-directory={d / 'backends'}",
        "--model-control-mode=explicit",
        f"--grpc-address={stack.host}",
        f"--grpc-port={p.triton_grpc}",
        f"--http-address={stack.host}",
        f"--http-port={p.triton_http}",
        "--allow-metrics=false",
        "--strict-readiness=false",
        "--exit-timeout-secs=5",
    ]


def _triton_healthy(stack: LocalStack) -> bool:
    return _http_ok(f"http://{stack.host}:{stack.ports.triton_http}/v2/health/ready")


TRITON = Component(
    name="triton",
    description="Triton Inference Server with the Python backend (CPU)",
    prepare=_triton_prepare,
    argv=_triton_argv,
    env=lambda stack: binaries.triton_environment(),
    is_healthy=_triton_healthy,
    endpoint=lambda stack: (
        f"{stack.host}:{stack.ports.triton_grpc} (gRPC), "
        f"http://{stack.host}:{stack.ports.triton_http}"
    ),
    start_timeout_s=90.0,
)

COMPONENTS: dict[str, Component] = {c.name: c for c in (KAFKA, S3, TRITON)}


def component_log(stack: LocalStack, name: str) -> Path:
    return stack.state_dir / "logs" / f"{name}.log"
