"""`python -m posttrain.rpc.healthcheck --port N`: exit 0 if the server's health service
answers SERVING (for the whole server, or --service NAME), 1 otherwise. For container
health checks; needs no API key."""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from posttrain.rpc.client import make_channel


def check(
    target: str,
    service: str = "",
    *,
    timeout: float = 3.0,
    tls_ca_file: str | None = None,
    tls_server_name: str | None = None,
) -> str:
    """The status name the server reports for `service` ("SERVING", "NOT_SERVING"...),
    or the gRPC error code name if the check itself fails (e.g. "UNAVAILABLE")."""
    with make_channel(target, tls_ca_file=tls_ca_file, tls_server_name=tls_server_name) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m posttrain.rpc.healthcheck")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--service", default="", help='full service name; "" = the server')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds")
    parser.add_argument("--tls-ca-file", default=None, help="CA of a TLS server")
    parser.add_argument("--tls-server-name", default=None, help="name in the server's cert")
    args = parser.parse_args(argv)
    host = f"[{args.host}]" if ":" in args.host and not args.host.startswith("[") else args.host
    status = check(
        f"{host}:{args.port}",
        args.service,
        timeout=args.timeout,
        tls_ca_file=args.tls_ca_file,
        tls_server_name=args.tls_server_name,
    )
    print(status, file=sys.stderr)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
