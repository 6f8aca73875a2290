"""`posttrain compare ...`: comparison runs of several tuning methods/configs on one
dataset and base model, and the recommendation (ComparisonService of the trainer).

Exit codes: see common.py (0 ok, 1 refused, 3 unreachable); `create --watch` and `watch`
exit 0 when the comparison completed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from posttrain.cli.common import (
    api_key_option,
    channel,
    grpc_errors,
    json_option,
    print_json,
    target_option,
)
from posttrain.cli.train import METHOD_NAMES, METHODS
from posttrain.v1 import common_pb2, comparison_pb2, comparison_pb2_grpc

STATE_NAMES = {
    value: name.removeprefix("COMPARISON_STATE_")
    for name, value in comparison_pb2.ComparisonState.items()
}
CANDIDATE_STATE_NAMES = {
    value: name.removeprefix("CANDIDATE_STATE_")
    for name, value in comparison_pb2.CandidateState.items()
}
VERDICT_NAMES = {
    value: name.removeprefix("GATE_VERDICT_").replace("UNSPECIFIED", "-")
    for name, value in common_pb2.GateVerdict.items()
}


def _stub(target: str, api_key: str) -> comparison_pb2_grpc.ComparisonServiceStub:
    return comparison_pb2_grpc.ComparisonServiceStub(channel(target, api_key))


def parse_candidate(text: str) -> comparison_pb2.CandidateSpec:
    """NAME=METHOD[,KEY=VALUE...]: `method_config.KEY` (or a bare method option) tunes the
    method, other keys are loop settings; e.g. lora-r4=lora,method_config.rank=4,lr=1e-3."""
    name, sep, rest = text.partition("=")
    method, *pairs = rest.split(",")
    if not sep or not name or method not in METHODS:
        raise click.BadParameter(
            f"{text!r} is not NAME=METHOD[,KEY=VALUE...] with METHOD one of {sorted(METHODS)}",
            param_hint="--candidate",
        )
    spec = comparison_pb2.CandidateSpec(name=name, method=METHODS[method])
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise click.BadParameter(
                f"{pair!r} in {text!r} is not KEY=VALUE", param_hint="--candidate"
            )
        if key.startswith("method_config."):
            spec.method_config[key.removeprefix("method_config.")] = value
        else:
            spec.hyperparameters[key] = value
    return spec


@click.group()
def compare() -> None:
    """Comparison runs: which method (and rank) for this data, and how to serve it."""


@compare.command()
@click.option(
    "--name", required=True, help="model name; candidates are <name>-cmp-<id8>-<candidate>"
)
@click.option("--base-model", required=True, help="a registered base model")
@click.option("--dataset", required=True, help="dataset name")
@click.option("--version", "dataset_version", required=True, help="an APPROVED dataset version")
@click.option(
    "--candidate",
    "candidates",
    multiple=True,
    required=True,
    metavar="NAME=METHOD[,KEY=VALUE...]",
    help="a candidate, e.g. lora-r4=lora,method_config.rank=4 or prompt=prompt (repeatable)",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="a loop setting for every candidate",
)
@click.option("--max-steps", default=0, show_default=True, help="steps per candidate (budget)")
@click.option("--max-candidate-seconds", default=0.0, help="training time per candidate (budget)")
@click.option("--max-total-seconds", default=0.0, help="time of the whole comparison (budget)")
@click.option("--tenants", default=1, show_default=True, help="tenants sharing one base model")
@click.option("--fast-rollback", is_flag=True, help="rollback must be a routing change")
@click.option("--latency-budget-ms", default=0.0, help="p50 latency the serving stack must meet")
@click.option(
    "--rules",
    "rules_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="decision rules YAML (default: the shipped libs/posttrain/comparison/rules.yaml)",
)
@click.option("--watch", "then_watch", is_flag=True, help="wait until the report is written")
@target_option("trainer")
@api_key_option
@json_option
@grpc_errors
def create(
    name,
    base_model,
    dataset,
    dataset_version,
    candidates,
    settings,
    max_steps,
    max_candidate_seconds,
    max_total_seconds,
    tenants,
    fast_rollback,
    latency_budget_ms,
    rules_file,
    then_watch,
    target,
    api_key,
    as_json,
):
    """Start a comparison: every candidate trained and evaluated the normal way."""
    specs = [parse_candidate(c) for c in candidates]
    for pair in settings:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--set")
        for spec in specs:
            spec.hyperparameters.setdefault(key, value)
    stub = _stub(target, api_key)
    created = stub.CreateComparison(
        comparison_pb2.CreateComparisonRequest(
            name=name,
            base_model=base_model,
            dataset=dataset,
            dataset_version=dataset_version,
            candidates=specs,
            budget=comparison_pb2.ComparisonBudget(
                max_steps=max_steps,
                max_candidate_wall_s=max_candidate_seconds,
                max_total_wall_s=max_total_seconds,
            ),
            serving=comparison_pb2.ServingContext(
                tenants=tenants, fast_rollback=fast_rollback, latency_budget_ms=latency_budget_ms
            ),
            rules_yaml=rules_file.read_text() if rules_file else "",
        )
    )
    if then_watch:
        created = _wait(stub, created.id, quiet=as_json)
    if as_json:
        print_json(created)
    else:
        _print(created)


@compare.command()
@click.argument("comparison_id")
@click.option("--poll", default=5.0, show_default=True, help="seconds between looks")
@target_option("trainer")
@api_key_option
@json_option
@grpc_errors
def watch(comparison_id, poll, target, api_key, as_json):
    """Wait until the comparison's report is written, printing candidates as they move."""
    got = _wait(_stub(target, api_key), comparison_id, quiet=as_json, poll_s=poll)
    print_json(got) if as_json else _print(got)


def _wait(stub, comparison_id: str, *, quiet: bool, poll_s: float = 5.0):
    seen: dict[str, int] = {}
    while True:
        got = stub.GetComparison(comparison_pb2.GetComparisonRequest(id=comparison_id))
        for c in got.candidates:
            if not quiet and seen.get(c.spec.name) != c.state:
                click.echo(f"  {c.spec.name}: {CANDIDATE_STATE_NAMES[c.state]}", err=True)
            seen[c.spec.name] = c.state
        if got.state == comparison_pb2.COMPARISON_STATE_COMPLETED:
            return got
        time.sleep(poll_s)


@compare.command()
@click.argument("comparison_id")
@target_option("trainer")
@api_key_option
@json_option
@grpc_errors
def show(comparison_id, target, api_key, as_json):
    """One comparison: its candidates, where each is, and the recommendation."""
    got = _stub(target, api_key).GetComparison(
        comparison_pb2.GetComparisonRequest(id=comparison_id)
    )
    print_json(got) if as_json else _print(got)


def _print(c: comparison_pb2.Comparison) -> None:
    click.echo(f"comparison {c.id} {c.name!r}: {STATE_NAMES[c.state]}")
    click.echo(f"  {c.base_model} on {c.dataset}@{c.dataset_version[:12]} (by {c.created_by})")
    table = Table(title="candidates")
    for column in (
        "candidate",
        "method",
        "config",
        "state",
        "job",
        "model version",
        "gate",
        "note",
    ):
        table.add_column(column, overflow="fold")
    for cand in c.candidates:
        spec = cand.spec
        config = {**spec.method_config, **spec.hyperparameters}
        table.add_row(
            spec.name,
            METHOD_NAMES.get(spec.method, "?"),
            ", ".join(f"{k}={v}" for k, v in sorted(config.items())),
            CANDIDATE_STATE_NAMES[cand.state],
            cand.job_id[:12],
            cand.model_version_id or "-",
            VERDICT_NAMES[cand.gate_verdict],
            cand.note[:120],
        )
    Console().print(table)
    if c.state == comparison_pb2.COMPARISON_STATE_COMPLETED:
        click.echo(
            f"recommended: {c.recommended_candidate or 'none'}, served {c.recommended_serving or '-'}"
        )
        click.echo(f"  {c.recommendation}")
        click.echo(f"  report {c.report.uri}  (posttrain compare report {c.id})")


@compare.command()
@click.argument("comparison_id")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="folder for comparison_report.json and .html",
)
@target_option("trainer")
@api_key_option
@json_option
@grpc_errors
def report(comparison_id, out, target, api_key, as_json):
    """The report of a completed comparison: saved as JSON + HTML, summarised here."""
    got = _stub(target, api_key).GetComparisonReport(
        comparison_pb2.GetComparisonRequest(id=comparison_id)
    )
    if as_json:
        click.echo(got.report_json)
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison_report.json").write_text(got.report_json)
    (out / "comparison_report.html").write_bytes(got.html)
    data = json.loads(got.report_json)
    quality = data["rules"]["quality_metric"]
    table = Table(title=f"comparison {comparison_id[:12]}: quality vs cost")
    for column in (
        "candidate",
        "outcome",
        quality,
        "gate",
        "train s",
        "trainable",
        "artifact MiB",
        "serving",
        "p50 ms",
        "served adapter p50 ms",
        "served merged p50 ms",
    ):
        table.add_column(column)
    front = set(data["pareto_front"])
    for c in data["candidates"]:
        table.add_row(
            c["name"] + (" *" if c["name"] in front else ""),
            c["outcome"],
            _num(c["quality"].get(quality)),
            c.get("gate_verdict") or "-",
            _num(c.get("wall_time_s")),
            "-" if c.get("trainable_share") is None else f"{c['trainable_share']:.3%}",
            _num(None if c.get("artifact_bytes") is None else c["artifact_bytes"] / 2**20),
            "/".join(c.get("serving_options") or []),
            _num(None if c.get("latency_p50_s") is None else c["latency_p50_s"] * 1000),
            *(_served_ms(c, mode) for mode in ("adapter", "merged")),
        )
    Console().print(table)
    click.echo("* on the Pareto front (no other candidate is better and cheaper)")
    click.echo(data["recommendation"]["summary"])
    click.echo(f"wrote {out / 'comparison_report.html'} and {out / 'comparison_report.json'}")


def _served_ms(candidate: dict, mode: str) -> str:
    served = (candidate.get("serving") or {}).get(mode)
    return _num(None if not served else served["latency_p50_s"] * 1000)


def _num(value) -> str:
    return "-" if value is None else f"{value:.4g}"


@compare.command("list")
@click.option("--limit", default=50, show_default=True)
@target_option("trainer")
@api_key_option
@json_option
@grpc_errors
def list_(limit, target, api_key, as_json):
    """Comparisons, newest first."""
    resp = _stub(target, api_key).ListComparisons(
        comparison_pb2.ListComparisonsRequest(page=common_pb2.PageRequest(page_size=limit))
    )
    if as_json:
        print_json(list(resp.comparisons))
        return
    table = Table(title=f"comparisons ({resp.page.total})")
    table.add_column("comparison", no_wrap=True, min_width=32)
    for column in ("name", "state", "base", "dataset", "candidates", "recommended", "by"):
        table.add_column(column, overflow="fold")
    for c in resp.comparisons:
        table.add_row(
            c.id,
            c.name,
            STATE_NAMES[c.state],
            c.base_model,
            f"{c.dataset}@{c.dataset_version[:12]}",
            ", ".join(x.spec.name for x in c.candidates),
            f"{c.recommended_candidate} ({c.recommended_serving})"
            if c.recommended_candidate
            else "-",
            c.created_by,
        )
    Console().print(table)
