"""The `posttrain` command line. Each command group is a module of its own."""

from __future__ import annotations

import click

from posttrain import __version__
from posttrain.cli.compare import compare
from posttrain.cli.console import console
from posttrain.cli.datasets import datasets
from posttrain.cli.demo import demo
from posttrain.cli.eval import eval_
from posttrain.cli.experiments import experiments
from posttrain.cli.models import models
from posttrain.cli.serve import serve
from posttrain.cli.stack import stack
from posttrain.cli.train import train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="posttrain")
def cli() -> None:
    """posttrain: approved data in, evaluated and served models out."""


cli.add_command(stack)
cli.add_command(datasets)
cli.add_command(demo)
cli.add_command(models)
cli.add_command(eval_)
cli.add_command(train)
cli.add_command(serve)
cli.add_command(experiments)
cli.add_command(compare)
cli.add_command(console)


def main() -> None:
    cli()
