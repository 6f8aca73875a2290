"""`posttrain console`: the web console in the foreground, until Ctrl-C.

It runs `python -m services.console` (the same process as in compose and k8s) with the
options given here turned into its POSTTRAIN_CONSOLE_* settings; options not given keep
the environment's values (and, without those, the services' default local ports).
"""

from __future__ import annotations

import os
import sys

import click

SERVICES = ("intake", "registry", "trainer", "evaluator", "gateway")


@click.command("console")
@click.option(
    "--host", default=None, help="address to bind [env POSTTRAIN_CONSOLE_HOST; 127.0.0.1]"
)
@click.option("--port", type=int, default=None, help="HTTP port [env POSTTRAIN_CONSOLE_PORT; 8080]")
@click.option("--intake", default=None, help="intake host:port [env POSTTRAIN_INTAKE_TARGET]")
@click.option("--registry", default=None, help="registry host:port [env POSTTRAIN_REGISTRY_TARGET]")
@click.option("--trainer", default=None, help="trainer host:port [env POSTTRAIN_TRAINER_TARGET]")
@click.option(
    "--evaluator", default=None, help="evaluator host:port [env POSTTRAIN_EVALUATOR_TARGET]"
)
@click.option("--gateway", default=None, help="gateway host:port [env POSTTRAIN_GATEWAY_TARGET]")
@click.option(
    "--secret-key-env",
    default="POSTTRAIN_CONSOLE_SECRET_KEY",
    show_default=True,
    help="environment variable holding the cookie-signing secret (never a flag: it would "
    "show in ps); unset = a random one per start",
)
def console(
    host: str | None,
    port: int | None,
    secret_key_env: str,
    **targets: str | None,
) -> None:
    """The web console: datasets and approvals, training jobs, models, evaluations, human
    review, deployments and experiments. Sign in with your API key."""
    env = dict(os.environ)
    if host is not None:
        env["POSTTRAIN_CONSOLE_HOST"] = host
    if port is not None:
        env["POSTTRAIN_CONSOLE_PORT"] = str(port)
    for name in SERVICES:
        if targets.get(name):
            env[f"POSTTRAIN_CONSOLE_{name.upper()}_TARGET"] = str(targets[name])
    if secret_key_env != "POSTTRAIN_CONSOLE_SECRET_KEY" and secret_key_env in os.environ:
        env["POSTTRAIN_CONSOLE_SECRET_KEY"] = os.environ[secret_key_env]
    shown_host = env.get("POSTTRAIN_CONSOLE_HOST", "127.0.0.1")
    shown_port = env.get("POSTTRAIN_CONSOLE_PORT", "8080")
    scheme = "https" if env.get("POSTTRAIN_CONSOLE_TLS_CERT_FILE") else "http"
    click.echo(f"posttrain console on {scheme}://{shown_host}:{shown_port} (Ctrl-C stops it)")
    sys.stdout.flush()
    # Replace this process: signals (Ctrl-C, SIGTERM) go straight to the server.
    os.execve(sys.executable, [sys.executable, "-m", "services.console"], env)
