"""`posttrain experiments ...`: A/B experiments on the gateway.

create  start an experiment on a use case: two or more arms, each a deployed model
        version (or base:<base model> for the base itself) with a share of the users
stop    stop it (the use case serves its deployment again)
report  per-arm numbers, differences against control, the verdict, and the report's
        HTML/PNG artifact uris
Every command takes --target (or POSTTRAIN_GATEWAY_TARGET) and --api-key (or
POSTTRAIN_API_KEY); exit codes as in posttrain.cli.common.
"""

from __future__ import annotations

import math

import click

from posttrain.cli.common import (
    api_key_option,
    channel,
    grpc_errors,
    json_option,
    print_json,
    print_table,
    target_option,
)
from posttrain.v1 import gateway_pb2, gateway_pb2_grpc


def _stub(target: str, api_key: str) -> gateway_pb2_grpc.InferenceGatewayStub:
    return gateway_pb2_grpc.InferenceGatewayStub(channel(target, api_key))


def parse_variants(values: tuple[str, ...]) -> list[gateway_pb2.Variant]:
    """NAME=MODEL_VERSION_ID[@SHARE] each; arms without a share split what is left evenly."""
    variants, open_arms, given = [], [], 0.0
    for value in values:
        name, sep, rest = value.partition("=")
        version, at, share = rest.rpartition("@") if "@" in rest else (rest, "", "")
        if not sep or not name or not version:
            raise click.BadParameter(
                f"{value!r} is not NAME=MODEL_VERSION_ID[@SHARE]", param_hint="--variant"
            )
        variant = gateway_pb2.Variant(name=name, model_version_id=version)
        if at:
            try:
                variant.share = float(share)
            except ValueError:
                raise click.BadParameter(f"share {share!r} is not a number", "--variant") from None
            given += variant.share
        else:
            open_arms.append(variant)
        variants.append(variant)
    for variant in open_arms:
        variant.share = max(0.0, 1.0 - given) / len(open_arms)
    return variants


@click.group()
def experiments() -> None:
    """A/B experiments in live traffic (gateway)."""


@experiments.command()
@click.argument("use_case")
@click.option(
    "--variant",
    "variant_specs",
    multiple=True,
    required=True,
    help="NAME=MODEL_VERSION_ID[@SHARE], repeatable; the first is the control. "
    "MODEL_VERSION_ID may be base:<base model>",
)
@click.option(
    "--max-incident-rate",
    type=float,
    default=0.0,
    show_default=True,
    help="policy-incident rate above which the guardrail stops an arm; 0 = no guardrail",
)
@target_option("gateway")
@api_key_option
@json_option
@grpc_errors
def create(use_case, variant_specs, max_incident_rate, target, api_key, as_json):
    """Start an experiment on USE_CASE ('x' = production, 'x/staging')."""
    experiment = _stub(target, api_key).CreateExperiment(
        gateway_pb2.CreateExperimentRequest(
            use_case=use_case,
            variants=parse_variants(variant_specs),
            max_policy_incident_rate=max_incident_rate,
        )
    )
    if as_json:
        print_json(experiment)
        return
    arms = ", ".join(f"{v.name}={v.model_version_id} ({v.share:.0%})" for v in experiment.variants)
    click.echo(f"experiment {experiment.id} running on {experiment.use_case}: {arms}")


@experiments.command()
@click.argument("experiment_id")
@target_option("gateway")
@api_key_option
@json_option
@grpc_errors
def stop(experiment_id, target, api_key, as_json):
    """Stop EXPERIMENT_ID."""
    experiment = _stub(target, api_key).StopExperiment(
        gateway_pb2.StopExperimentRequest(id=experiment_id)
    )
    if as_json:
        print_json(experiment)
        return
    click.echo(f"experiment {experiment.id} stopped")


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def _judge(v: gateway_pb2.VariantStats) -> str:
    return f"{v.judge_score.mean:.2f} ({v.judge_score.n})" if v.HasField("judge_score") else "-"


@experiments.command()
@click.argument("experiment_id")
@target_option("gateway")
@api_key_option
@json_option
@grpc_errors
def report(experiment_id, target, api_key, as_json):
    """The report of EXPERIMENT_ID (computed now from the stored requests and feedback)."""
    result = _stub(target, api_key).GetExperimentReport(
        gateway_pb2.GetExperimentReportRequest(id=experiment_id)
    )
    if as_json:
        print_json(result)
        return
    state = "running" if result.experiment.running else "stopped"
    judged = bool(result.judges)  # the judge's column only where a judge graded
    print_table(
        f"experiment {experiment_id} ({state}; control {result.control})",
        [
            "arm",
            "requests",
            "feedback",
            "success",
            "95% CI",
            "incidents",
            "p50 ms",
            "p95 ms",
            "cost/success",
            *(["judge (n)"] if judged else []),
            "stopped",
        ],
        [
            [
                v.variant,
                v.requests,
                v.feedback_count,
                _pct(v.success_rate),
                f"{_pct(v.success_ci_low)}..{_pct(v.success_ci_high)}",
                _pct(v.policy_incident_rate),
                _ms(v.latency_p50_ms),
                _ms(v.latency_p95_ms),
                "-"
                if math.isnan(v.cost_per_successful_task)
                else f"{v.cost_per_successful_task:.6f}",
                *([_judge(v)] if judged else []),
                "yes" if v.stopped else "",
            ]
            for v in result.variants
        ],
    )
    click.echo(f"verdict: {result.verdict}")
    if result.judges:
        click.echo(f"judge: {', '.join(result.judges)}")
    if result.html_uri:
        click.echo(f"html: {result.html_uri}")
        click.echo(f"png:  {result.png_uri}")
