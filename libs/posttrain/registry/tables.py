"""The registry's tables and their migrations (component "registry").

Every table lives in the registry service's database, beside the event bus tables, so a
state change, its audit entry, its lineage edges and the events it announces commit in
one transaction. Rows are never deleted: model versions are archived, alias history
entries are marked rolled back, deployments are superseded.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from alembic.operations import Operations
from sqlalchemy.orm import Mapped, mapped_column

from posttrain.db import Base, Migration

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")  # autoincrement on both backends
_TS = sa.DateTime(timezone=True)


class BaseModelRow(Base):
    """A Hugging Face model folder in the artifact store that versions can be built on."""

    __tablename__ = "registry_base_models"

    name: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    architecture: Mapped[str] = mapped_column(sa.String(200))
    parameters: Mapped[int] = mapped_column(sa.BigInteger)
    weights: Mapped[dict[str, Any]] = mapped_column(sa.JSON)  # ArtifactRef of the manifest
    weights_sha256: Mapped[str] = mapped_column(sa.String(64))
    total_size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    chat_template_revision: Mapped[str] = mapped_column(sa.String(200))
    config: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)
    registered_by: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[dt.datetime] = mapped_column(_TS)


class ModelName(Base):
    """A model name, owned by one tenant, with the last version number handed out."""

    __tablename__ = "registry_model_names"

    name: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(200), index=True)
    latest_version: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[dt.datetime] = mapped_column(_TS)


class ModelVersionRow(Base):
    __tablename__ = "registry_model_versions"
    __table_args__ = (sa.UniqueConstraint("name", "version", name="uq_registry_version"),)

    id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)  # "<name>:v<version>"
    name: Mapped[str] = mapped_column(sa.String(128))
    version: Mapped[int] = mapped_column(sa.Integer)
    tenant: Mapped[str] = mapped_column(sa.String(200), index=True)
    kind: Mapped[str] = mapped_column(sa.String(20))  # adapter | merged | full
    method: Mapped[str] = mapped_column(sa.String(20))  # full | lora | qlora | ...
    base_model: Mapped[str] = mapped_column(sa.String(200), index=True)
    base_model_sha256: Mapped[str] = mapped_column(sa.String(64))
    training_job_id: Mapped[str | None] = mapped_column(sa.String(200), unique=True)
    dataset_version: Mapped[str] = mapped_column(sa.String(200), index=True)
    lineage: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    artifacts: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON)
    metrics: Mapped[dict[str, float]] = mapped_column(sa.JSON)
    config_yaml: Mapped[str] = mapped_column(sa.Text)
    chat_template_revision: Mapped[str] = mapped_column(sa.String(200))
    produced_by: Mapped[str] = mapped_column(sa.String(300))
    created_at: Mapped[dt.datetime] = mapped_column(_TS)
    archived_at: Mapped[dt.datetime | None] = mapped_column(_TS, nullable=True)
    archived_by: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    archive_reason: Mapped[str | None] = mapped_column(sa.Text, nullable=True)


class EvaluationRow(Base):
    """One evaluation.completed: a release-gate verdict of one suite for one version."""

    __tablename__ = "registry_evaluations"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)  # arrival order
    report_id: Mapped[str] = mapped_column(sa.String(200), unique=True)
    model_version_id: Mapped[str] = mapped_column(sa.String(200), index=True)
    suite: Mapped[str] = mapped_column(sa.String(200))
    suite_version: Mapped[str] = mapped_column(sa.String(100))
    verdict: Mapped[str] = mapped_column(sa.String(10))  # pass | fail
    reasons: Mapped[list[str]] = mapped_column(sa.JSON)
    metrics: Mapped[dict[str, float]] = mapped_column(sa.JSON)
    report: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)
    recorded_at: Mapped[dt.datetime] = mapped_column(_TS)


class AliasRow(Base):
    """(tenant, use case, stage) -> model version; `revision` counts every change."""

    __tablename__ = "registry_aliases"
    __table_args__ = (sa.UniqueConstraint("tenant", "use_case", "stage", name="uq_registry_alias"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(sa.String(200))
    use_case: Mapped[str] = mapped_column(sa.String(100))
    stage: Mapped[str] = mapped_column(sa.String(20))  # candidate | staging | production
    model_version_id: Mapped[str] = mapped_column(sa.String(200), index=True)
    revision: Mapped[int] = mapped_column(sa.BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(_TS)
    updated_by: Mapped[str] = mapped_column(sa.String(200))


class AliasHistoryRow(Base):
    """One promotion of an alias. The entries not rolled back, oldest first, are the
    alias's stack: the last is the current version, Rollback pops it."""

    __tablename__ = "registry_alias_history"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    alias_id: Mapped[int] = mapped_column(_ID, index=True)
    model_version_id: Mapped[str] = mapped_column(sa.String(200))
    promoted_at: Mapped[dt.datetime] = mapped_column(_TS)
    promoted_by: Mapped[str] = mapped_column(sa.String(200))
    gate_overridden: Mapped[bool] = mapped_column(sa.Boolean)
    reason: Mapped[str] = mapped_column(sa.Text)
    rolled_back_at: Mapped[dt.datetime | None] = mapped_column(_TS, nullable=True)
    rolled_back_by: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)


class DeploymentRow(Base):
    """A deployment.requested the registry sent, and what the serving layer answered."""

    __tablename__ = "registry_deployments"

    id: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    alias_id: Mapped[int] = mapped_column(_ID, index=True)
    tenant: Mapped[str] = mapped_column(sa.String(200))
    model_version_id: Mapped[str] = mapped_column(sa.String(200), index=True)
    previous_model_version_id: Mapped[str] = mapped_column(sa.String(200))
    rollback: Mapped[bool] = mapped_column(sa.Boolean)
    # requested -> live | failed; live or requested -> superseded by a later live one
    status: Mapped[str] = mapped_column(sa.String(20))
    requested_by: Mapped[str] = mapped_column(sa.String(200))
    requested_at: Mapped[dt.datetime] = mapped_column(_TS)
    completed_at: Mapped[dt.datetime | None] = mapped_column(_TS, nullable=True)
    error: Mapped[str] = mapped_column(sa.Text)
    triton_model: Mapped[str] = mapped_column(sa.String(200))
    lora_name: Mapped[str] = mapped_column(sa.String(200))


class LineageNodeRow(Base):
    __tablename__ = "registry_lineage_nodes"

    id: Mapped[str] = mapped_column(sa.String(400), primary_key=True)  # "<kind>:<key>"
    kind: Mapped[str] = mapped_column(sa.String(30))
    label: Mapped[str] = mapped_column(sa.String(400))
    tenant: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)  # None: shared
    attributes: Mapped[dict[str, str]] = mapped_column(sa.JSON)
    created_at: Mapped[dt.datetime] = mapped_column(_TS)


class LineageEdgeRow(Base):
    """from_id -> to_id in the direction things flow (dataset -> job -> model -> ...)."""

    __tablename__ = "registry_lineage_edges"
    __table_args__ = (
        sa.UniqueConstraint("from_id", "to_id", "relation", name="uq_registry_lineage_edge"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    from_id: Mapped[str] = mapped_column(sa.String(400), index=True)
    to_id: Mapped[str] = mapped_column(sa.String(400), index=True)
    relation: Mapped[str] = mapped_column(sa.String(50))
    created_at: Mapped[dt.datetime] = mapped_column(_TS)


class AuditRow(Base):
    __tablename__ = "registry_audit"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(_TS)
    actor: Mapped[str] = mapped_column(sa.String(200), index=True)
    action: Mapped[str] = mapped_column(sa.String(100), index=True)
    subject: Mapped[str] = mapped_column(sa.String(400), index=True)
    tenant: Mapped[str | None] = mapped_column(sa.String(200), nullable=True, index=True)
    reason: Mapped[str] = mapped_column(sa.Text)
    details: Mapped[dict[str, str]] = mapped_column(sa.JSON)


def _m0001(op: Operations) -> None:
    # Spelled out rather than taken from the models: a migration must not change when they do.
    id_col = lambda: sa.Column("id", _ID, primary_key=True, autoincrement=True)  # noqa: E731
    op.create_table(
        "registry_base_models",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("architecture", sa.String(200), nullable=False),
        sa.Column("parameters", sa.BigInteger, nullable=False),
        sa.Column("weights", sa.JSON, nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=False),
        sa.Column("total_size_bytes", sa.BigInteger, nullable=False),
        sa.Column("chat_template_revision", sa.String(200), nullable=False),
        sa.Column("config", sa.JSON, nullable=True),
        sa.Column("registered_by", sa.String(200), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "registry_model_names",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("tenant", sa.String(200), nullable=False, index=True),
        sa.Column("latest_version", sa.Integer, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "registry_model_versions",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False, index=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("method", sa.String(20), nullable=False),
        sa.Column("base_model", sa.String(200), nullable=False, index=True),
        sa.Column("base_model_sha256", sa.String(64), nullable=False),
        sa.Column("training_job_id", sa.String(200), nullable=True, unique=True),
        sa.Column("dataset_version", sa.String(200), nullable=False, index=True),
        sa.Column("lineage", sa.JSON, nullable=False),
        sa.Column("artifacts", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("config_yaml", sa.Text, nullable=False),
        sa.Column("chat_template_revision", sa.String(200), nullable=False),
        sa.Column("produced_by", sa.String(300), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("archived_at", _TS, nullable=True),
        sa.Column("archived_by", sa.String(200), nullable=True),
        sa.Column("archive_reason", sa.Text, nullable=True),
        sa.UniqueConstraint("name", "version", name="uq_registry_version"),
    )
    op.create_table(
        "registry_evaluations",
        id_col(),
        sa.Column("report_id", sa.String(200), nullable=False, unique=True),
        sa.Column("model_version_id", sa.String(200), nullable=False, index=True),
        sa.Column("suite", sa.String(200), nullable=False),
        sa.Column("suite_version", sa.String(100), nullable=False),
        sa.Column("verdict", sa.String(10), nullable=False),
        sa.Column("reasons", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("report", sa.JSON, nullable=True),
        sa.Column("recorded_at", _TS, nullable=False),
    )
    op.create_table(
        "registry_aliases",
        id_col(),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("use_case", sa.String(100), nullable=False),
        sa.Column("stage", sa.String(20), nullable=False),
        sa.Column("model_version_id", sa.String(200), nullable=False, index=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
        sa.UniqueConstraint("tenant", "use_case", "stage", name="uq_registry_alias"),
    )
    op.create_table(
        "registry_alias_history",
        id_col(),
        sa.Column("alias_id", _ID, nullable=False, index=True),
        sa.Column("model_version_id", sa.String(200), nullable=False),
        sa.Column("promoted_at", _TS, nullable=False),
        sa.Column("promoted_by", sa.String(200), nullable=False),
        sa.Column("gate_overridden", sa.Boolean, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("rolled_back_at", _TS, nullable=True),
        sa.Column("rolled_back_by", sa.String(200), nullable=True),
    )
    op.create_table(
        "registry_deployments",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("alias_id", _ID, nullable=False, index=True),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("model_version_id", sa.String(200), nullable=False, index=True),
        sa.Column("previous_model_version_id", sa.String(200), nullable=False),
        sa.Column("rollback", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.Column("requested_at", _TS, nullable=False),
        sa.Column("completed_at", _TS, nullable=True),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("triton_model", sa.String(200), nullable=False),
        sa.Column("lora_name", sa.String(200), nullable=False),
    )
    op.create_table(
        "registry_lineage_nodes",
        sa.Column("id", sa.String(400), primary_key=True),
        sa.Column("kind", sa.String(30), nullable=False),
        sa.Column("label", sa.String(400), nullable=False),
        sa.Column("tenant", sa.String(200), nullable=True),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "registry_lineage_edges",
        id_col(),
        sa.Column("from_id", sa.String(400), nullable=False, index=True),
        sa.Column("to_id", sa.String(400), nullable=False, index=True),
        sa.Column("relation", sa.String(50), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("from_id", "to_id", "relation", name="uq_registry_lineage_edge"),
    )
    op.create_table(
        "registry_audit",
        id_col(),
        sa.Column("at", _TS, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False, index=True),
        sa.Column("action", sa.String(100), nullable=False, index=True),
        sa.Column("subject", sa.String(400), nullable=False, index=True),
        sa.Column("tenant", sa.String(200), nullable=True, index=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
    )


REGISTRY_MIGRATIONS = [Migration("0001_registry_tables", _m0001)]
