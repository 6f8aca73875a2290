"""`posttrain stack up | down | status`: the embedded local stack."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from posttrain.stack import LocalStack, StackError, StackPorts
from posttrain.stack.components import COMPONENTS

DEFAULT_STATE_DIR = Path(os.environ.get("POSTTRAIN_STATE_DIR", ".posttrain")) / "stack"


def _load(state_dir: Path) -> LocalStack:
    return LocalStack.load_or_create(state_dir, StackPorts.from_env())


def _print(statuses, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([asdict(s) for s in statuses], indent=2))
        return
    table = Table(title="posttrain local stack")
    for col in ("component", "state", "pid", "endpoint", "log"):
        table.add_column(col)
    for s in statuses:
        state = "healthy" if s.healthy else ("running, not healthy" if s.running else "stopped")
        table.add_row(s.name, state, str(s.pid or "-"), s.endpoint, s.log)
    Console().print(table)


state_dir_option = click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="where data, logs and pid files live",
)
components_option = click.option(
    "--component",
    "components",
    multiple=True,
    type=click.Choice(sorted(COMPONENTS)),
    help="only this component (repeatable); default: all",
)
json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


@click.group()
def stack() -> None:
    """Start, stop and inspect the local Kafka/S3/Triton stack."""


@stack.command()
@state_dir_option
@components_option
@json_option
def up(state_dir: Path, components: tuple[str, ...], as_json: bool) -> None:
    """Start the stack (idempotent: healthy components are left alone)."""
    local = _load(state_dir)
    try:
        statuses = local.up(list(components) or None)
    except StackError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    _print(statuses, as_json)
    if not as_json:
        click.echo("\nPoint services at it with:")
        for key, value in local.service_env().items():
            click.echo(f"  export {key}={value}")


@stack.command()
@state_dir_option
@components_option
def down(state_dir: Path, components: tuple[str, ...]) -> None:
    """Stop the stack; no process is left behind."""
    stopped = _load(state_dir).down(list(components) or None)
    click.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@stack.command()
@state_dir_option
@components_option
@json_option
def status(state_dir: Path, components: tuple[str, ...], as_json: bool) -> None:
    """Show each component: running, healthy, endpoint, log file. Exit 1 if one is down."""
    statuses = _load(state_dir).status(list(components) or None)
    _print(statuses, as_json)
    sys.exit(0 if all(s.healthy for s in statuses) else 1)
