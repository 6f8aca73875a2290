"""`posttrain serve ...`: the inference gateway from the command line.

deploy         promote a version to a served stage (registry) and wait until the gateway
               has it live in Triton, or says why not
generate       one request to a use case (what a client app sends), optionally streamed
deployments    deployments of your tenant, newest first: state (live, superseded,
               failed) and, for failed ones, why; filters by use case and state
deploy-status  one deployment: the gateway's view (state, error), and the registry's
               record of it
Every command takes --target (or POSTTRAIN_GATEWAY_TARGET) and --api-key (or
POSTTRAIN_API_KEY); exit codes as in posttrain.cli.common, and for deploy: 4 the
deployment failed, 6 not live within --wait-timeout.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import click
import grpc

from posttrain.cli.common import (
    EXIT_REFUSED,
    api_key_option,
    channel,
    grpc_errors,
    json_option,
    print_json,
    print_table,
    target_option,
    to_dict,
)
from posttrain.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, registry_pb2, registry_pb2_grpc

EXIT_DEPLOY_FAILED = 4
EXIT_DEPLOY_TIMEOUT = 6
SERVED_STAGES = {"staging": registry_pb2.STAGE_STAGING, "production": registry_pb2.STAGE_PRODUCTION}


def _stub(target: str, api_key: str) -> gateway_pb2_grpc.InferenceGatewayStub:
    return gateway_pb2_grpc.InferenceGatewayStub(channel(target, api_key))


@click.group()
def serve() -> None:
    """Serving: generate through the gateway, see deployments."""


def _message(text: str) -> gateway_pb2.ChatMessage:
    role, sep, content = text.partition("=")
    if not sep or not role:
        raise click.BadParameter(f"{text!r} is not ROLE=CONTENT", param_hint="--message")
    return gateway_pb2.ChatMessage(role=role, content=content)


@serve.command()
@click.argument("use_case")
@click.argument("prompt", required=False)
@click.option("--system", default=None, help="a system message (makes it a chat)")
@click.option(
    "--message",
    "messages",
    multiple=True,
    help="ROLE=CONTENT, repeatable: a chat conversation (PROMPT is appended as the user's)",
)
@click.option("--max-tokens", type=int, default=0, help="0 = the gateway's default")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy")
@click.option("--top-p", type=float, default=0.0, help="0 = 1")
@click.option("--seed", type=int, default=0, help="0 = none")
@click.option("--stop", multiple=True, help="stop string, repeatable")
@click.option("--user-key", default="", help="sticky A/B assignment key (e.g. a user id)")
@click.option("--stream", is_flag=True, help="print text as it is generated")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="deadline, s")
@target_option("gateway")
@api_key_option
@json_option
@grpc_errors
def generate(
    use_case,
    prompt,
    system,
    messages,
    max_tokens,
    temperature,
    top_p,
    seed,
    stop,
    user_key,
    stream,
    timeout,
    target,
    api_key,
    as_json,
):
    """Send PROMPT (or '-' for stdin) to USE_CASE ('x' = production, 'x/staging')."""
    if prompt == "-":
        prompt = sys.stdin.read()
    request = gateway_pb2.GenerateRequest(
        use_case=use_case,
        sampling=gateway_pb2.SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=stop
        ),
        user_key=user_key,
    )
    if system is not None or messages:
        chat = [gateway_pb2.ChatMessage(role="system", content=system)] if system else []
        chat += [_message(m) for m in messages]
        if prompt:
            chat.append(gateway_pb2.ChatMessage(role="user", content=prompt))
        request.conversation.messages.extend(chat)
    elif prompt:
        request.prompt = prompt
    else:
        raise click.UsageError("give a PROMPT, or --message / --system for a chat")
    stub = _stub(target, api_key)
    if not stream:
        response = stub.Generate(request, timeout=timeout)
        if as_json:
            print_json(response)
        else:
            click.echo(response.text)
            _summary(response)
        return
    for chunk in stub.GenerateStream(request, timeout=timeout):
        if as_json:
            print_json(chunk)
        elif chunk.final:
            click.echo(chunk.text_delta)
            _summary(chunk.summary)
        else:
            click.echo(chunk.text_delta, nl=False)


def _summary(response: gateway_pb2.GenerateResponse) -> None:
    arm = (
        f", experiment {response.experiment_id} arm {response.variant}" if response.variant else ""
    )
    click.echo(
        f"-- {response.usage.prompt_tokens} prompt + {response.usage.completion_tokens} "
        f"completion tokens, {response.latency_ms:.0f} ms, deployment "
        f"{response.deployment_id or '(base)'}{arm}, request {response.request_id}",
        err=True,
    )


_STATES = {
    "live": gateway_pb2.DEPLOYMENT_STATE_LIVE,
    "superseded": gateway_pb2.DEPLOYMENT_STATE_SUPERSEDED,
    "failed": gateway_pb2.DEPLOYMENT_STATE_FAILED,
}


def _state(d: gateway_pb2.Deployment) -> str:
    return gateway_pb2.DeploymentState.Name(d.state).removeprefix("DEPLOYMENT_STATE_").lower()


def _kind(d: gateway_pb2.Deployment) -> str:
    return common_pb2.ModelKind.Name(d.kind).removeprefix("MODEL_KIND_").lower()


def _list(stub, request: gateway_pb2.ListDeploymentsRequest, limit: int) -> list:
    """Every deployment the request matches (page by page), up to `limit`."""
    found: list = []
    while len(found) < limit:
        response = stub.ListDeployments(request, timeout=30)
        found += response.deployments
        if not response.page.next_page_token:
            break
        request.page.page_token = response.page.next_page_token
    return found[:limit]


def route_name(use_case: str, stage: str) -> str:
    """How the gateway names a route: production is the plain use case."""
    return use_case if stage == "production" else f"{use_case}/{stage}"


def wait_for_deployment(
    stub,
    *,
    route: str,
    model_version_id: str,
    since: float,
    timeout_s: float,
    poll_s: float = 1.0,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> gateway_pb2.Deployment | None:
    """The gateway's deployment of `model_version_id` on `route` that completed at or
    after `since` (epoch seconds), live or failed; None when none within `timeout_s`.
    One that went live and was superseded since counts as done too."""
    deadline = clock() + timeout_s
    while True:
        for d in _list(stub, gateway_pb2.ListDeploymentsRequest(use_case=route), 500):
            finished = d.completed_at.seconds + d.completed_at.nanos / 1e9
            if (
                d.model_version_id == model_version_id
                and d.use_case == route
                and finished >= since
                and d.state != gateway_pb2.DEPLOYMENT_STATE_UNSPECIFIED
            ):
                return d
        if clock() >= deadline:
            return None
        sleep(poll_s)


@serve.command()
@click.argument("version_id")
@click.argument("use_case")
@click.option(
    "--stage",
    type=click.Choice(list(SERVED_STAGES)),
    default="staging",
    show_default=True,
    help="the served stage to promote to",
)
@click.option("--override-gate", is_flag=True, help="promote despite the gate (operator)")
@click.option("--reason", default="", help="why (required with --override-gate; audited)")
@click.option("--no-wait", is_flag=True, help="return once the registry has promoted it")
@click.option("--wait-timeout", type=float, default=600.0, show_default=True, help="s")
@click.option(
    "--registry-target",
    envvar="POSTTRAIN_REGISTRY_TARGET",
    default="127.0.0.1:50054",
    show_default=True,
    help="the registry, which records the promotion and asks the gateway to deploy",
)
@target_option("gateway")
@api_key_option
@json_option
@grpc_errors
def deploy(
    version_id,
    use_case,
    stage,
    override_gate,
    reason,
    no_wait,
    wait_timeout,
    registry_target,
    target,
    api_key,
    as_json,
):
    """Serve VERSION_ID on USE_CASE: promote it to STAGE in the registry, which asks the
    gateway to deploy it; wait until the gateway has it live in Triton (exit 0), or says
    it failed (exit 4, with the reason), or --wait-timeout passes (exit 6)."""
    since = time.time() - 1.0  # the gateway's clock may be a little behind ours
    registry = registry_pb2_grpc.RegistryServiceStub(channel(registry_target, api_key))
    alias = registry.Promote(
        registry_pb2.PromoteRequest(
            model_version_id=version_id,
            use_case=use_case,
            stage=SERVED_STAGES[stage],
            override_gate=override_gate,
            reason=reason,
        ),
        timeout=30,
    )
    if not as_json:
        click.echo(f"promoted: {alias.use_case}/{stage} -> {alias.model_version_id}")
    if no_wait:
        if as_json:
            print_json(alias)
        return
    route = route_name(use_case, stage)
    if not as_json:
        click.echo(f"waiting for the gateway to serve {route} (up to {wait_timeout:.0f} s)...")
    found = wait_for_deployment(
        _stub(target, api_key),
        route=route,
        model_version_id=version_id,
        since=since,
        timeout_s=wait_timeout,
    )
    if as_json:
        click.echo(
            json.dumps(
                {"alias": to_dict(alias), "deployment": to_dict(found) if found else None}, indent=2
            )
        )
    if found is None:
        if not as_json:
            click.echo(f"{route}: not live after {wait_timeout:.0f} s (see deploy-status)")
        sys.exit(EXIT_DEPLOY_TIMEOUT)
    if found.state == gateway_pb2.DEPLOYMENT_STATE_FAILED:
        if not as_json:
            click.echo(f"{found.id}: failed: {found.error}")
        sys.exit(EXIT_DEPLOY_FAILED)
    if not as_json:
        click.echo(
            f"{found.id}: live; {route} -> {found.model_version_id} on {found.triton_model} "
            f"{found.lora_name or '(no adapter)'}"
        )


@serve.command()
@click.option("--tenant", default="", help="default: the API key's tenant; '*' (admin): all")
@click.option("--use-case", default="", help="'x': every stage of x; 'x/staging': that stage")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(list(_STATES)),
    help="only deployments in this state (repeatable); default: every state",
)
@click.option("--live", "live_only", is_flag=True, help="only the live ones (= --state live)")
@click.option("--limit", type=int, default=500, show_default=True, help="at most this many")
@target_option("gateway")
@api_key_option
@json_option
@grpc_errors
def deployments(tenant, use_case, states, live_only, limit, target, api_key, as_json):
    """Deployments, newest first, with their state and, for failed ones, why."""
    wanted = {_STATES[s] for s in states} | ({_STATES["live"]} if live_only else set())
    request = gateway_pb2.ListDeploymentsRequest(
        tenant=tenant,
        use_case=use_case,
        states=sorted(wanted),
        page=common_pb2.PageRequest(page_size=min(limit, 500)),
    )
    rows = _list(_stub(target, api_key), request, limit)
    if as_json:
        print_json(rows)
        return
    print_table(
        "deployments",
        [
            "id",
            "tenant",
            "use case",
            "model version",
            "kind",
            "state",
            "completed",
            "served by",
            "error",
        ],
        [
            [
                d.id,
                d.tenant,
                d.use_case,
                d.model_version_id,
                _kind(d),
                _state(d) + (" (rollback)" if d.rollback else ""),
                d.completed_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
                f"{d.triton_model}/{d.lora_name}" if d.lora_name else d.triton_model,
                d.error,
            ]
            for d in rows
        ],
    )


@serve.command("deploy-status")
@click.argument("deployment_id")
@click.option(
    "--registry-target",
    envvar="POSTTRAIN_REGISTRY_TARGET",
    default="127.0.0.1:50054",
    show_default=True,
    help="the registry, for its record of the deployment ('' = don't ask)",
)
@target_option("gateway")
@api_key_option
@json_option
@grpc_errors
def deploy_status(deployment_id, registry_target, target, api_key, as_json):
    """Is DEPLOYMENT_ID live? Exit 0 when the gateway knows it, 1 when not (yet)."""
    listed = _list(_stub(target, api_key), gateway_pb2.ListDeploymentsRequest(), 100_000)
    found = next((d for d in listed if d.id == deployment_id), None)
    history = _registry_history(registry_target, api_key, deployment_id)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "deployment": to_dict(found) if found else None,
                    "registry": [to_dict(e) for e in history],
                },
                indent=2,
            )
        )
    else:
        if found is None:
            click.echo(f"{deployment_id}: not handled by the gateway (yet)")
        else:
            reason = f" ({found.error})" if found.error else ""
            seconds = (
                found.completed_at.ToDatetime() - found.created_at.ToDatetime()
            ).total_seconds()
            click.echo(
                f"{deployment_id}: {_state(found)}{reason}; {found.use_case} -> "
                f"{found.model_version_id} ({_kind(found)}) on {found.triton_model or '-'} "
                f"{found.lora_name or '(no adapter)'}; handled in {seconds:.1f} s"
            )
        for entry in reversed(history):
            reason = f": {entry.reason}" if entry.reason else ""
            click.echo(f"  registry: {entry.action} by {entry.actor}{reason}")
    if found is None:
        sys.exit(EXIT_REFUSED)


def _registry_history(target: str, api_key: str, deployment_id: str) -> list:
    """The registry's audit entries of the deployment, newest first; [] if unreachable."""
    if not target:
        return []
    stub = registry_pb2_grpc.RegistryServiceStub(channel(target, api_key))
    try:
        response = stub.ListAudit(
            registry_pb2.ListAuditRequest(
                subject=f"deployment:{deployment_id}", page=common_pb2.PageRequest(page_size=20)
            ),
            timeout=5,
        )
    except grpc.RpcError as exc:
        click.echo(f"  (registry at {target}: {exc.code().name}: {exc.details()})", err=True)
        return []
    return list(response.entries)
