"""Channels to posttrain services, for the CLI, for tests and for service-to-service calls:
the API key and the current correlation id ride along on every call."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from posttrain.config import GrpcClientSettings
from posttrain.rpc.auth import api_key_client_interceptor
from posttrain.rpc.logs import correlation_id_client_interceptor

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # matches GrpcServerSettings.max_message_bytes


def make_channel(
    target: str,
    *,
    api_key: str | None = None,
    tls_ca_file: str | None = None,
    tls: bool = False,
    tls_server_name: str | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to `target` ("host:port"). TLS when `tls_ca_file` is given (trusting that
    CA) or `tls` is set (trusting the system's CAs); `tls_server_name` overrides the name
    the server certificate is checked against. Without any of the three, they come from
    GrpcClientSettings (POSTTRAIN_GRPC_CLIENT_TLS_CA_FILE ...), so every client of a
    process, the service-to-service ones included, follows one setting."""
    if not (tls_ca_file or tls or tls_server_name):
        configured = GrpcClientSettings()
        tls_ca_file = configured.tls_ca_file or None
        tls = configured.tls
        tls_server_name = configured.tls_server_name or None
    opts: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *options,
    ]
    if tls_server_name:
        opts.append(("grpc.ssl_target_name_override", tls_server_name))
    if tls_ca_file or tls:
        try:
            root = Path(tls_ca_file).read_bytes() if tls_ca_file else None
        except OSError as exc:
            raise ValueError(f"tls_ca_file {tls_ca_file!r} cannot be read: {exc}") from exc
        credentials = grpc.ssl_channel_credentials(root_certificates=root)
        channel = grpc.secure_channel(target, credentials, options=opts)
    else:
        channel = grpc.insecure_channel(target, options=opts)
    interceptors: list[Any] = [correlation_id_client_interceptor()]
    if api_key:
        interceptors.append(api_key_client_interceptor(api_key))
    return grpc.intercept_channel(channel, *interceptors)


CREDENTIAL_HEADERS = ("authorization", "x-api-key")


def forwarded_credentials(context: grpc.ServicerContext) -> tuple[tuple[str, str], ...]:
    """The caller's API key headers, to send on with calls made on its behalf, so the
    called service applies its own rules (roles, tenant) to the original caller."""
    return tuple(
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if key in CREDENTIAL_HEADERS and isinstance(value, str)
    )
