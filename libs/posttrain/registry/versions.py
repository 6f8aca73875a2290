"""Model versions: registered from training.completed, read, listed and archived.

A version is an adapter (PEFT, loaded onto its base), a merged model or a fully
fine-tuned model. Its id is "<name>:v<N>": a name belongs to the tenant that registered
its first version, and N counts up per name and is never reused, since versions are
archived, never deleted. Registration is idempotent per training job: a second
training.completed for the same job (a redelivery under a new event id) changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from google.protobuf import json_format
from sqlalchemy.orm import Session

from posttrain.db import utcnow
from posttrain.events import topics
from posttrain.registry import audit, deployments, lineage, names
from posttrain.registry.emit import Emit
from posttrain.registry.errors import UnknownBaseModel, WrongBaseModel
from posttrain.registry.tables import AliasRow, BaseModelRow, ModelName, ModelVersionRow
from posttrain.rpc.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from posttrain.storage import ArtifactRef
from posttrain.v1 import common_pb2, events_pb2


def register_from_training(
    session: Session,
    event: events_pb2.TrainingCompleted,
    *,
    produced_by: str,
    emit: Emit,
) -> tuple[ModelVersionRow, bool]:
    """Record the version a training job produced and announce it (model.registered);
    (version, created). Every check runs before the first write, so a refusal leaves the
    session clean for the caller to record why."""
    _check_training_completed(event)
    existing = session.scalar(
        sa.select(ModelVersionRow).where(ModelVersionRow.training_job_id == event.job_id)
    )
    if existing is not None:
        return existing, False

    what = f"training job {event.job_id}'s {names.kind_word(event.kind)} {event.output_name!r}"
    base_name, trained_on = _split_base(event.base_model)
    base = session.get(BaseModelRow, base_name)
    if base is None:
        raise UnknownBaseModel(what, base_name)
    lineage_name, lineage_sha = _split_base(event.lineage.base_model)
    for sha in (trained_on, lineage_sha if lineage_name in ("", base_name) else ""):
        if sha and sha != base.weights_sha256:
            raise WrongBaseModel(what, base_name, sha, base.weights_sha256)
    if lineage_name and lineage_name != base_name:
        raise InvalidArgument(
            "lineage.base_model",
            f"names {lineage_name!r} but base_model is {base_name!r}",
        )
    owner = session.get(ModelName, event.output_name)
    if owner is not None and owner.tenant != event.tenant:
        raise FailedPrecondition(
            f"model name {event.output_name!r} belongs to tenant {owner.tenant!r}; "
            f"{what} of tenant {event.tenant!r} needs another output_name"
        )

    # Checks done: from here on, writes.
    number = _next_version_number(session, owner, event.output_name, event.tenant)
    vid = names.version_id(event.output_name, number)
    record_lineage = common_pb2.Lineage()
    record_lineage.CopyFrom(event.lineage)
    record_lineage.training_job_id = event.job_id
    record_lineage.base_model = f"{base_name}@{base.weights_sha256}"
    row = ModelVersionRow(
        id=vid,
        name=event.output_name,
        version=number,
        tenant=event.tenant,
        kind=names.kind_word(event.kind),
        method=names.method_word(event.method),
        base_model=base_name,
        base_model_sha256=base.weights_sha256,
        training_job_id=event.job_id,
        dataset_version=event.lineage.dataset_version,
        lineage=json_format.MessageToDict(record_lineage, preserving_proto_field_name=True),
        artifacts=[artifact_dict(a) for a in event.artifacts],
        metrics=dict(event.metrics),
        config_yaml=event.config_yaml,
        chat_template_revision=event.chat_template_revision or base.chat_template_revision,
        produced_by=produced_by,
        created_at=utcnow(),
    )
    session.add(row)
    node = _record_lineage(session, row, event)
    audit.record(
        session,
        actor=produced_by,
        action="model_version.registered",
        subject=node,
        tenant=row.tenant,
        details={
            "training_job_id": event.job_id,
            "kind": row.kind,
            "method": row.method,
            "base_model": base_name,
            "dataset_version": row.dataset_version,
        },
    )
    emit(
        topics.MODEL_REGISTERED,
        events_pb2.ModelRegistered(
            model_version_id=vid,
            name=row.name,
            version=number,
            kind=event.kind,
            base_model=base_name,
            artifacts=event.artifacts,
            lineage=record_lineage,
            tenant=row.tenant,
            chat_template_revision=row.chat_template_revision,
        ),
        aggregate_id=vid,
    )
    return row, True


def get(
    session: Session, version_id: str, *, tenant_scope: str | None, field: str = "id"
) -> ModelVersionRow:
    """The version, or NotFound naming it (also when it belongs to a tenant out of scope:
    whether another tenant's version exists is not revealed). `field` names the argument
    in an InvalidArgument."""
    names.check_version_id(version_id, field)
    row = session.get(ModelVersionRow, version_id)
    if row is None or (tenant_scope is not None and row.tenant != tenant_scope):
        raise NotFound("model version", version_id)
    return row


def list_versions(
    session: Session,
    *,
    tenant_scope: str | None,
    tenant: str = "",
    name: str = "",
    include_archived: bool = False,
    offset: int = 0,
    limit: int = 50,
) -> tuple[Sequence[ModelVersionRow], int]:
    """Newest version first within each name, names in order."""
    where: list[Any] = []
    if tenant_scope is not None:
        where.append(ModelVersionRow.tenant == tenant_scope)
    if tenant:
        where.append(ModelVersionRow.tenant == tenant)
    if name:
        where.append(ModelVersionRow.name == name)
    if not include_archived:
        where.append(ModelVersionRow.archived_at.is_(None))
    total = session.scalar(sa.select(sa.func.count()).select_from(ModelVersionRow).where(*where))
    rows = session.scalars(
        sa.select(ModelVersionRow)
        .where(*where)
        .order_by(ModelVersionRow.name, ModelVersionRow.version.desc())
        .offset(offset)
        .limit(limit)
    ).all()
    return rows, total or 0


def archive(
    session: Session, version_id: str, *, actor: str, reason: str, tenant_scope: str | None
) -> ModelVersionRow:
    """Archive instead of delete: refused while an alias or a deployment points at it.
    Archiving an archived version is a no-op."""
    row = get(session, version_id, tenant_scope=tenant_scope)
    if row.archived_at is not None:
        return row
    alias = session.scalar(
        sa.select(AliasRow).where(AliasRow.model_version_id == version_id).order_by(AliasRow.id)
    )
    if alias is not None:
        key = names.alias_key(alias.tenant, alias.use_case, alias.stage)
        raise FailedPrecondition(
            f"cannot archive {version_id}: alias {key} points at it; promote another version "
            f"there or roll the alias back first"
        )
    serving = deployments.serving(session, version_id)
    if serving:
        raise FailedPrecondition(
            f"cannot archive {version_id}: deployment {serving[0].id} ({serving[0].status}) "
            f"serves it; wait until a later deployment of its alias is live"
        )
    row.archived_at = utcnow()
    row.archived_by = actor
    row.archive_reason = reason
    node = names.node_id(names.MODEL_VERSION, version_id)
    lineage.ensure_node(session, names.MODEL_VERSION, version_id, attributes={"archived": "true"})
    audit.record(
        session,
        actor=actor,
        action="model_version.archived",
        subject=node,
        tenant=row.tenant,
        reason=reason,
    )
    return row


def artifact_refs(row: ModelVersionRow) -> list[ArtifactRef]:
    return [ArtifactRef(**a) for a in row.artifacts]


def artifact_dict(ref: common_pb2.ArtifactRef) -> dict[str, Any]:
    checked = ArtifactRef.from_proto(ref)
    return {
        "uri": checked.uri,
        "sha256": checked.sha256,
        "size_bytes": checked.size_bytes,
        "media_type": checked.media_type,
    }


def lineage_proto(row: ModelVersionRow) -> common_pb2.Lineage:
    return json_format.ParseDict(row.lineage, common_pb2.Lineage())


# ------------------------------------------------------------------ helpers


def _check_training_completed(event: events_pb2.TrainingCompleted) -> None:
    problems: list[FieldViolation] = []

    def need(ok: bool, field: str, message: str) -> None:
        if not ok:
            problems.append(FieldViolation(field, message))

    need(bool(event.job_id), "job_id", "is required")
    name_ok = bool(names.MODEL_NAME.fullmatch(event.output_name))
    need(name_ok, "output_name", f"{event.output_name!r} is not a valid model name")
    need(
        event.kind != common_pb2.MODEL_KIND_UNSPECIFIED,
        "kind",
        "is required (adapter, merged or full)",
    )
    need(event.method != common_pb2.TUNING_METHOD_UNSPECIFIED, "method", "is required")
    need(bool(names.TENANT.fullmatch(event.tenant)), "tenant", f"{event.tenant!r} is not valid")
    base_name = _split_base(event.base_model)[0]
    need(
        bool(names.BASE_MODEL_NAME.fullmatch(base_name)),
        "base_model",
        "every version names the registered base model it was trained from",
    )
    need(len(event.artifacts) > 0, "artifacts", "a model version needs at least one artifact")
    for i, ref in enumerate(event.artifacts):
        try:
            ArtifactRef.from_proto(ref)
        except ValueError as exc:
            problems.append(FieldViolation(f"artifacts[{i}]", str(exc)))
    if problems:
        raise InvalidArgument(violations=problems)


def _split_base(value: str) -> tuple[str, str]:
    """'name@sha256' or 'name' -> (name, sha256 or '')."""
    name, _, sha = value.partition("@")
    return name, sha


def _next_version_number(session: Session, owner: ModelName | None, name: str, tenant: str) -> int:
    if owner is None:
        # A concurrent first registration of the same name collides on the primary key:
        # the event is retried and then takes the UPDATE path below.
        session.add(ModelName(name=name, tenant=tenant, latest_version=1, created_at=utcnow()))
        session.flush()
        return 1
    # One UPDATE: on PostgreSQL it locks the row, so concurrent registrations serialise.
    session.execute(
        sa.update(ModelName)
        .where(ModelName.name == name)
        .values(latest_version=ModelName.latest_version + 1)
        .execution_options(synchronize_session=False)
    )
    return session.scalar(sa.select(ModelName.latest_version).where(ModelName.name == name))


def _record_lineage(
    session: Session, row: ModelVersionRow, event: events_pb2.TrainingCompleted
) -> str:
    extra = dict(event.lineage.extra)
    job = lineage.ensure_node(
        session,
        names.TRAINING_JOB,
        event.job_id,
        tenant=row.tenant,
        attributes={
            "method": row.method,
            "base_model": row.base_model,
            "dataset_version": row.dataset_version,
            "code_version": event.lineage.code_version,
            "seed": event.lineage.seed,
        },
    )
    node = lineage.ensure_node(
        session,
        names.MODEL_VERSION,
        row.id,
        tenant=row.tenant,
        attributes={"kind": row.kind, "method": row.method, "base_model": row.base_model},
    )
    base = lineage.ensure_node(session, names.BASE_MODEL, row.base_model)
    if row.dataset_version:
        dataset = lineage.ensure_node(
            session,
            names.DATASET_VERSION,
            row.dataset_version,
            label=f"{extra['dataset']}@{row.dataset_version[:12]}" if "dataset" in extra else "",
            attributes={"dataset": extra.get("dataset", "")},
        )
        lineage.add_edge(session, dataset, job, "input")
    lineage.add_edge(session, job, node, "output")
    lineage.add_edge(session, base, node, "base")
    return node
