"""`posttrain models ...`: the registry from the command line, over gRPC.

list, show, archive, bases, import-base, lineage, aliases, promote, rollback, audit.
Every command takes --json, --target (or POSTTRAIN_REGISTRY_TARGET) and --api-key (or
POSTTRAIN_API_KEY); exit codes as in posttrain.cli.common.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

from posttrain.cli.common import (
    EXIT_REFUSED,
    api_key_option,
    channel,
    grpc_errors,
    json_option,
    print_json,
    target_option,
    to_dict,
)
from posttrain.config import S3Settings
from posttrain.registry.names import NODE_KINDS
from posttrain.v1 import common_pb2, registry_pb2, registry_pb2_grpc

STAGES = {
    "candidate": registry_pb2.STAGE_CANDIDATE,
    "staging": registry_pb2.STAGE_STAGING,
    "production": registry_pb2.STAGE_PRODUCTION,
}
DIRECTIONS = {
    "up": registry_pb2.GetLineageRequest.UPSTREAM,
    "down": registry_pb2.GetLineageRequest.DOWNSTREAM,
    "both": registry_pb2.GetLineageRequest.BOTH,
}

stage_option = click.option(
    "--stage", type=click.Choice(list(STAGES)), default="production", show_default=True
)
tenant_option = click.option("--tenant", default="", help="default: the API key's tenant")
Stub = registry_pb2_grpc.RegistryServiceStub


def registry_call(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--target, --api-key, --json and gRPC error handling; `fn` gets a stub instead."""

    @target_option("registry")
    @api_key_option
    @json_option
    @grpc_errors
    @functools.wraps(fn)
    def command(target: str, api_key: str, **kwargs: Any) -> Any:
        return fn(Stub(channel(target, api_key)), **kwargs)

    return command


@click.group()
def models() -> None:
    """Base models, model versions, stages, lineage and the audit log (registry service)."""


# ------------------------------------------------------------------ versions


@models.command("list")
@click.option("--name", default="", help="only versions of this model name")
@tenant_option
@click.option("--archived", is_flag=True, help="include archived versions")
@click.option("--limit", default=100, show_default=True)
@registry_call
def list_versions(
    stub: Stub, name: str, tenant: str, archived: bool, limit: int, as_json: bool
) -> None:
    """Model versions, newest first per name."""
    response = stub.ListModelVersions(
        registry_pb2.ListModelVersionsRequest(
            name=name,
            tenant=tenant,
            include_archived=archived,
            page=common_pb2.PageRequest(page_size=limit),
        ),
    )
    _output(
        as_json,
        response,
        ("id", "kind", "method", "base", "gate", "tenant", "created", "archived"),
        (
            (
                v.id,
                _enum(common_pb2.ModelKind, v.kind, "MODEL_KIND_"),
                _enum(common_pb2.TuningMethod, v.method, "TUNING_METHOD_"),
                v.base_model,
                _enum(common_pb2.GateVerdict, v.gate_verdict, "GATE_VERDICT_") or "-",
                v.tenant,
                _time(v.created_at),
                "yes" if v.archived else "",
            )
            for v in response.versions
        ),
        title=f"model versions ({response.page.total})",
    )


@models.command()
@click.argument("version_id")
@registry_call
def show(stub: Stub, version_id: str, as_json: bool) -> None:
    """One model version: artifacts, lineage, gate verdict, aliases."""
    version = stub.GetModelVersion(registry_pb2.GetModelVersionRequest(id=version_id))
    pointing = stub.ListAliases(
        registry_pb2.ListAliasesRequest(tenant=version.tenant, model_version_id=version.id),
    )
    if as_json:
        click.echo(
            json.dumps(
                {"version": to_dict(version), "aliases": [to_dict(a) for a in pointing.aliases]},
                indent=2,
            )
        )
        return
    table = Table(title=version.id, show_header=False)
    rows = [
        ("kind", _enum(common_pb2.ModelKind, version.kind, "MODEL_KIND_")),
        ("method", _enum(common_pb2.TuningMethod, version.method, "TUNING_METHOD_")),
        ("base model", version.base_model),
        ("tenant", version.tenant),
        ("produced by", version.produced_by),
        ("dataset version", version.lineage.dataset_version),
        ("training job", version.lineage.training_job_id),
        ("chat template", version.chat_template_revision),
        ("gate", _enum(common_pb2.GateVerdict, version.gate_verdict, "GATE_VERDICT_") or "none"),
        ("gate reasons", "\n".join(version.gate_reasons)),
        ("aliases", ", ".join(f"{a.use_case}/{_stage(a.stage)}" for a in pointing.aliases)),
        (
            "archived",
            f"{_time(version.archived_at)} {version.archive_reason}" if version.archived else "",
        ),
        ("created", _time(version.created_at)),
    ]
    rows += [
        (f"artifact {i}", f"{a.uri}\nsha256 {a.sha256}") for i, a in enumerate(version.artifacts)
    ]
    for key, value in rows:
        if value:
            table.add_row(key, value)
    Console().print(table)


@models.command()
@click.argument("version_id")
@click.option("--reason", default="", help="why (goes to the audit log)")
@registry_call
def archive(stub: Stub, version_id: str, reason: str, as_json: bool) -> None:
    """Archive a version (refused while an alias or a deployment points at it)."""
    version = stub.ArchiveModelVersion(
        registry_pb2.ArchiveModelVersionRequest(id=version_id, reason=reason)
    )
    _done(as_json, version, f"archived {version.id}")


# ------------------------------------------------------------------ base models


@models.command()
@registry_call
def bases(stub: Stub, as_json: bool) -> None:
    """Registered base models."""
    response = stub.ListBaseModels(
        registry_pb2.ListBaseModelsRequest(page=common_pb2.PageRequest(page_size=500)),
    )
    _output(
        as_json,
        response,
        ("name", "architecture", "parameters", "size", "sha256", "registered"),
        (
            (
                m.name,
                m.architecture,
                f"{m.parameters:,}",
                f"{m.total_size_bytes / 1e6:.1f} MB",
                m.weights.sha256[:16],
                _time(m.created_at),
            )
            for m in response.models
        ),
        title="base models",
    )


@models.command("import-base")
@click.argument("name")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--architecture", default="", help="default: from config.json")
@click.option("--chat-template-revision", default="")
@registry_call
def import_base(
    stub: Stub,
    name: str,
    folder: Path,
    architecture: str,
    chat_template_revision: str,
    as_json: bool,
) -> None:
    """Upload a Hugging Face model FOLDER to the artifact store (POSTTRAIN_S3_*) as
    base-models/NAME and register it as base model NAME."""
    from posttrain.storage import ArtifactStore, ArtifactStoreError

    try:
        ref = ArtifactStore.from_settings(S3Settings()).put_folder(folder, f"base-models/{name}")
    except (ArtifactStoreError, ValueError) as exc:
        click.echo(f"error: upload failed: {exc}", err=True)
        sys.exit(EXIT_REFUSED)
    model = stub.RegisterBaseModel(
        registry_pb2.RegisterBaseModelRequest(
            name=name,
            source_uri=ref.uri,
            architecture=architecture,
            chat_template_revision=chat_template_revision,
        ),
    )
    _done(as_json, model, f"registered base model {model.name} ({model.weights.sha256})")


# ------------------------------------------------------------------ lineage


@models.command()
@click.argument("node")
@click.option(
    "--direction",
    type=click.Choice(list(DIRECTIONS)),
    default="both",
    show_default=True,
    help="up: where it came from; down: what came of it",
)
@click.option("--depth", default=0, help="max edges to walk (0 = 10)")
@registry_call
def lineage(stub: Stub, node: str, direction: str, depth: int, as_json: bool) -> None:
    """The lineage graph around NODE: "<kind>:<id>" (dataset_version:<hash>,
    training_job:<id>, alias:<tenant>/<use case>/<stage> ...) or a model version id."""
    if node.split(":", 1)[0] not in NODE_KINDS:
        node = f"model_version:{node}"
    graph = stub.GetLineage(
        registry_pb2.GetLineageRequest(
            node_id=node, direction=DIRECTIONS[direction], max_depth=depth
        ),
    )
    if as_json:
        print_json(graph)
        return
    table = Table(title=f"lineage of {node} ({direction})")
    for column in ("from", "relation", "to"):
        table.add_column(column)
    for edge in graph.edges:
        table.add_row(edge.from_id, edge.relation, edge.to_id)
    Console().print(table)
    nodes = Table(title="nodes")
    for column in ("id", "kind", "label", "attributes"):
        nodes.add_column(column)
    for n in graph.nodes:
        attrs = ", ".join(f"{k}={v}" for k, v in sorted(n.attributes.items()))
        nodes.add_row(n.id, n.kind, n.label, attrs)
    Console().print(nodes)


# ------------------------------------------------------------------ stages


@models.command("aliases")
@click.option("--use-case", default="")
@tenant_option
@registry_call
def list_aliases(stub: Stub, use_case: str, tenant: str, as_json: bool) -> None:
    """Which version each stage of each use case points at."""
    response = stub.ListAliases(
        registry_pb2.ListAliasesRequest(
            tenant=tenant, use_case=use_case, page=common_pb2.PageRequest(page_size=500)
        ),
    )
    _output(
        as_json,
        response,
        ("use case", "stage", "version", "rollback to", "revision", "updated by", "updated"),
        (
            (
                a.use_case,
                _stage(a.stage),
                a.model_version_id,
                a.previous_model_version_id or "-",
                str(a.revision),
                a.updated_by,
                _time(a.updated_at),
            )
            for a in response.aliases
        ),
        title="aliases",
    )


@models.command()
@click.argument("version_id")
@click.argument("use_case")
@stage_option
@tenant_option
@click.option("--override-gate", is_flag=True, help="operator only; needs --reason")
@click.option("--reason", default="", help="why (goes to the audit log)")
@click.option("--expected-revision", default=0, help="fail if the alias moved past this revision")
@registry_call
def promote(
    stub: Stub,
    version_id: str,
    use_case: str,
    stage: str,
    tenant: str,
    override_gate: bool,
    reason: str,
    expected_revision: int,
    as_json: bool,
) -> None:
    """Point USE_CASE's STAGE at VERSION_ID (production needs a passing release gate)."""
    alias = stub.Promote(
        registry_pb2.PromoteRequest(
            model_version_id=version_id,
            use_case=use_case,
            tenant=tenant,
            stage=STAGES[stage],
            override_gate=override_gate,
            reason=reason,
            expected_revision=expected_revision,
        ),
    )
    _done(
        as_json,
        alias,
        f"{alias.use_case}/{stage} -> {alias.model_version_id} (revision {alias.revision})",
    )


@models.command()
@click.argument("use_case")
@stage_option
@tenant_option
@click.option("--reason", required=True, help="why (goes to the audit log)")
@click.option("--expected-revision", default=0)
@registry_call
def rollback(
    stub: Stub,
    use_case: str,
    stage: str,
    tenant: str,
    reason: str,
    expected_revision: int,
    as_json: bool,
) -> None:
    """Point USE_CASE's STAGE back at the version before the current one."""
    alias = stub.Rollback(
        registry_pb2.RollbackRequest(
            use_case=use_case,
            tenant=tenant,
            stage=STAGES[stage],
            reason=reason,
            expected_revision=expected_revision,
        ),
    )
    _done(
        as_json,
        alias,
        f"{alias.use_case}/{stage} rolled back to {alias.model_version_id} "
        f"(revision {alias.revision})",
    )


# ------------------------------------------------------------------ audit


@models.command()
@click.option("--subject", default="", help='e.g. "model_version:support-bot:v3"')
@click.option("--actor", default="")
@click.option("--action", default="", help='e.g. "alias.promoted"')
@click.option("--limit", default=50, show_default=True)
@registry_call
def audit(stub: Stub, subject: str, actor: str, action: str, limit: int, as_json: bool) -> None:
    """The audit log, newest first."""
    response = stub.ListAudit(
        registry_pb2.ListAuditRequest(
            subject=subject,
            actor=actor,
            action=action,
            page=common_pb2.PageRequest(page_size=limit),
        ),
    )
    _output(
        as_json,
        response,
        ("at", "actor", "action", "subject", "reason"),
        ((_time(e.at), e.actor, e.action, e.subject, e.reason) for e in response.entries),
        title=f"audit ({response.page.total})",
    )


# ------------------------------------------------------------------ output


def _output(
    as_json: bool,
    response: Message,
    columns: Iterable[str],
    rows: Iterable[Iterable[str]],
    *,
    title: str,
) -> None:
    if as_json:
        print_json(response)
        return
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, no_wrap=i == 0)  # ids are copied from here: keep them whole
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def _done(as_json: bool, message: Message, text: str) -> None:
    if as_json:
        print_json(message)
    else:
        click.echo(text)


def _enum(enum: Any, value: int, prefix: str) -> str:
    return "" if value == 0 else enum.Name(value).removeprefix(prefix).lower()


def _stage(value: int) -> str:
    return _enum(registry_pb2.Stage, value, "STAGE_")


def _time(ts: Any) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
