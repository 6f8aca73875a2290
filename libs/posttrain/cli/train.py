"""`posttrain train ...`: submit, watch, cancel, list, show (trainer service).

Exit codes (see common.py for 1-3): 0 ok, and for `watch` (or `submit --watch`) the job
SUCCEEDED; 4 the watched job FAILED; 5 it was CANCELLED.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from posttrain.cli.common import (
    api_key_option,
    channel,
    grpc_errors,
    json_option,
    print_json,
    target_option,
    to_dict,
)
from posttrain.v1 import common_pb2, training_pb2, training_pb2_grpc

EXIT_JOB_FAILED = 4
EXIT_JOB_CANCELLED = 5

METHODS = {
    name.removeprefix("TUNING_METHOD_").lower(): value
    for name, value in common_pb2.TuningMethod.items()
    if value != common_pb2.TUNING_METHOD_UNSPECIFIED
}
METHOD_NAMES = {v: k for k, v in METHODS.items()}
STATES = {
    name.removeprefix("JOB_STATE_"): value
    for name, value in training_pb2.JobState.items()
    if value != training_pb2.JOB_STATE_UNSPECIFIED
}
STATE_NAMES = {v: k for k, v in STATES.items()}
EXIT_FOR_STATE = {
    training_pb2.JOB_STATE_SUCCEEDED: 0,
    training_pb2.JOB_STATE_FAILED: EXIT_JOB_FAILED,
    training_pb2.JOB_STATE_CANCELLED: EXIT_JOB_CANCELLED,
}


def _stub(target: str, api_key: str) -> training_pb2_grpc.TrainingServiceStub:
    return training_pb2_grpc.TrainingServiceStub(channel(target, api_key))


def _overrides(pairs: tuple[str, ...]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--set")
        values[key.strip()] = value
    return values


@click.group()
def train() -> None:
    """Training jobs: submit, follow, cancel (trainer service)."""


@train.command()
@click.option("--base-model", required=True, help="a registered base model")
@click.option("--dataset", required=True, help="dataset name")
@click.option("--version", "dataset_version", required=True, help="an APPROVED dataset version")
@click.option(
    "--method",
    type=click.Choice(sorted(METHODS)),
    default=None,
    help="tuning method (default: the config file's, else lora)",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="a hyper-parameter, e.g. lr=1e-4, max_steps=200, rank=8 (repeatable)",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="a TrainingJobConfig YAML; --set values override it",
)
@click.option("--output-name", required=True, help="name of the model version it produces")
@click.option("--tenant", default="", help="default: your key's tenant")
@click.option(
    "--processes",
    type=int,
    default=0,
    help="processes (GPUs) per node the job trains on, under torchrun + FSDP2; 0 = one, in "
    "the worker",
)
@click.option(
    "--nodes",
    type=int,
    default=0,
    help="worker nodes the job spans (each runs --processes); 0 = one",
)
@click.option("--watch", "then_watch", is_flag=True, help="follow the job until it ends")
@target_option("trainer")
@api_key_option
@json_option
@grpc_errors
def submit(
    base_model,
    dataset,
    dataset_version,
    method,
    settings,
    config_file,
    output_name,
    tenant,
    processes,
    nodes,
    then_watch,
    target,
    api_key,
    as_json,
):
    """Submit a training job: a base model tuned on an approved dataset version."""
    config_yaml = config_file.read_text() if config_file else ""
    if method is None and not config_yaml:
        method = "lora"
    stub = _stub(target, api_key)
    job = stub.SubmitJob(
        training_pb2.SubmitJobRequest(
            base_model=base_model,
            dataset=dataset,
            dataset_version=dataset_version,
            method=METHODS[method] if method else common_pb2.TUNING_METHOD_UNSPECIFIED,
            hyperparameters=_overrides(settings),
            config_yaml=config_yaml,
            output_name=output_name,
            tenant=tenant,
            resources=training_pb2.TrainingResources(processes=processes, nodes=nodes),
        )
    )
    if as_json and not then_watch:
        print_json(job)
        return
    click.echo(
        f"submitted job {job.job_id} ({STATE_NAMES[job.state]}): {METHOD_NAMES[job.method]} "
        f"on {job.base_model} with {job.dataset}@{job.dataset_version[:12]} -> {job.output_name}",
        err=as_json,
    )
    if then_watch:
        sys.exit(_watch(stub, job.job_id, as_json))


@train.command()
@click.argument("job_id")
@target_option("trainer")
@api_key_option
@json_option
@grpc_errors
def watch(job_id, target, api_key, as_json):
    """Follow a job: step, loss, learning rate, tokens/s and ETA until it ends."""
    sys.exit(_watch(_stub(target, api_key), job_id, as_json))


def _watch(stub: training_pb2_grpc.TrainingServiceStub, job_id: str, as_json: bool) -> int:
    last = None
    if as_json:
        for update in stub.WatchJob(training_pb2.GetJobRequest(job_id=job_id)):
            click.echo(json.dumps(to_dict(update)))
            last = update
    else:
        last = _watch_with_progress_bar(stub, job_id)
    if last is None:
        return EXIT_JOB_FAILED
    job = stub.GetJob(training_pb2.GetJobRequest(job_id=job_id))
    if not as_json:
        line = f"job {job_id}: {STATE_NAMES[job.state]} at step {job.step}/{job.total_steps}"
        click.echo(line + (f" ({job.error})" if job.error else ""))
        for ref in job.artifacts:
            click.echo(f"  {ref.uri}  sha256 {ref.sha256}")
    return EXIT_FOR_STATE.get(job.state, EXIT_JOB_FAILED)


def _watch_with_progress_bar(stub, job_id: str) -> training_pb2.JobProgress | None:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]} tok/s"),
        TextColumn("ETA {task.fields[eta]}"),
        console=Console(),
    )
    last = None
    with progress:
        task = progress.add_task(job_id[:12], total=None, loss="-", lr="-", speed="-", eta="-")
        for update in stub.WatchJob(training_pb2.GetJobRequest(job_id=job_id)):
            last = update
            fields = {"description": f"{job_id[:12]} {STATE_NAMES.get(update.state, '?')}"}
            if update.total_steps:
                fields.update(total=update.total_steps, completed=update.step)
            if update.loss:
                fields["loss"] = f"{update.loss:.4f}"
            if update.learning_rate:
                fields["lr"] = f"{update.learning_rate:.2e}"
            if update.tokens_per_second:
                fields["speed"] = f"{update.tokens_per_second:,.0f}"
            if update.state == training_pb2.JOB_STATE_RUNNING and update.eta_seconds:
                fields["eta"] = _duration(update.eta_seconds)
            progress.update(task, **fields)
    return last


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@train.command()
@click.argument("job_id")
@click.option("--reason", default="", help="why; recorded with the job")
@target_option("trainer")
@api_key_option
@json_option
@grpc_errors
def cancel(job_id, reason, target, api_key, as_json):
    """Cancel a job: a queued one at once, a running one at its next step."""
    job = _stub(target, api_key).CancelJob(
        training_pb2.CancelJobRequest(job_id=job_id, reason=reason)
    )
    if as_json:
        print_json(job)
    elif job.state == training_pb2.JOB_STATE_CANCELLED:
        click.echo(f"job {job_id}: CANCELLED")
    else:
        click.echo(f"job {job_id}: cancel requested; it stops at its next step ({job.step})")


@train.command("list")
@click.option("--state", type=click.Choice(sorted(STATES)), default=None)
@click.option("--tenant", default="", help="default: your key's tenant (admin: all)")
@click.option("--limit", default=50, show_default=True)
@target_option("trainer")
@api_key_option
@json_option
@grpc_errors
def list_(state, tenant, limit, target, api_key, as_json):
    """Jobs, newest first."""
    resp = _stub(target, api_key).ListJobs(
        training_pb2.ListJobsRequest(
            tenant=tenant,
            state=STATES[state] if state else training_pb2.JOB_STATE_UNSPECIFIED,
            page=common_pb2.PageRequest(page_size=limit),
        )
    )
    if as_json:
        print_json(list(resp.jobs))
        return
    table = Table(title=f"training jobs ({resp.page.total})")
    table.add_column("job", no_wrap=True, min_width=32)  # whole: it is what the other commands take
    for column in ("state", "method", "base", "dataset", "output", "step", "loss", "by"):
        table.add_column(column, overflow="fold")
    for j in resp.jobs:
        table.add_row(
            j.job_id,
            STATE_NAMES[j.state],
            METHOD_NAMES.get(j.method, "?"),
            j.base_model,
            f"{j.dataset}@{j.dataset_version[:12]}",
            j.output_name,
            f"{j.step}/{j.total_steps}",
            f"{j.last_loss:.4f}" if j.last_loss else "-",
            j.submitted_by,
        )
    Console().print(table)


@train.command()
@click.argument("job_id")
@click.option("--config", "with_config", is_flag=True, help="also print the job's config YAML")
@target_option("trainer")
@api_key_option
@json_option
@grpc_errors
def show(job_id, with_config, target, api_key, as_json):
    """One job: state, progress, where it runs, what it produced."""
    j = _stub(target, api_key).GetJob(training_pb2.GetJobRequest(job_id=job_id))
    if as_json:
        print_json(j)
        return
    click.echo(f"job {j.job_id}: {STATE_NAMES[j.state]}")
    click.echo(f"  {METHOD_NAMES.get(j.method, '?')} on {j.base_model}")
    click.echo(f"  data {j.dataset}@{j.dataset_version}")
    click.echo(f"  output {j.output_name} (tenant {j.tenant}, submitted by {j.submitted_by})")
    loss = f", loss {j.last_loss:.4f}" if j.last_loss else ""
    click.echo(f"  step {j.step}/{j.total_steps}{loss}; attempt {j.attempt} {j.worker_id}")
    if j.error:
        click.echo(f"  error: {j.error}")
    for ref in j.artifacts:
        click.echo(f"  artifact {ref.uri}  sha256 {ref.sha256}")
    if with_config:
        click.echo(j.config_yaml.rstrip())
