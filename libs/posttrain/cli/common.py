"""What every CLI command group shares: connecting to a service, printing, exit codes.

Exit codes scripts can trust: 0 ok, 1 the service refused (any gRPC status), 2 bad usage
(click's own), 3 the service could not be reached.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click
import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

from posttrain.config import SERVICE_PORTS
from posttrain.rpc import make_channel
from posttrain.rpc.errors import field_violations

EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3


def target_option(service: str):
    default = os.environ.get(
        f"POSTTRAIN_{service.upper()}_TARGET", f"127.0.0.1:{SERVICE_PORTS[service]}"
    )
    return click.option(
        "--target", default=default, show_default=True, help=f"{service} service host:port"
    )


api_key_option = click.option(
    "--api-key",
    envvar="POSTTRAIN_API_KEY",
    required=True,
    help="API key (or set POSTTRAIN_API_KEY)",
)
json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


def channel(target: str, api_key: str) -> grpc.Channel:
    return make_channel(target, api_key=api_key)


def grpc_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a gRPC error into a readable message and a trustworthy exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            code = exc.code()
            click.echo(f"error: {code.name}: {exc.details()}", err=True)
            for v in field_violations(exc)[:20]:
                where = f"row {v.row} " if v.row else ""
                click.echo(f"  {where}{v.field}: {v.message}", err=True)
            sys.exit(EXIT_UNREACHABLE if code == grpc.StatusCode.UNAVAILABLE else EXIT_REFUSED)

    return wrapper


def to_dict(message: Message) -> dict:
    return MessageToDict(message, preserving_proto_field_name=True)


def print_json(message: Message | list[Message]) -> None:
    if isinstance(message, list):
        click.echo(json.dumps([to_dict(m) for m in message], indent=2))
    else:
        click.echo(json.dumps(to_dict(message), indent=2))


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[str(c) for c in row])
    Console().print(table)
