"""The intake service's tables: datasets, their immutable versions, and the audit log."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic.operations import Operations
from sqlalchemy.orm import Mapped, mapped_column

from posttrain.db import Base, Migration

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


class DatasetRow(Base):
    __tablename__ = "intake_datasets"
    __table_args__ = (sa.UniqueConstraint("tenant", "name"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(sa.String(100))
    name: Mapped[str] = mapped_column(sa.String(100))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    regulated: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(sa.String(200))


class DatasetVersionRow(Base):
    __tablename__ = "intake_dataset_versions"
    __table_args__ = (sa.UniqueConstraint("dataset_id", "version"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    dataset_id: Mapped[int] = mapped_column(sa.ForeignKey("intake_datasets.id"), index=True)
    version: Mapped[str] = mapped_column(sa.String(64))
    state: Mapped[str] = mapped_column(sa.String(20))  # PENDING | APPROVED | REJECTED
    schema: Mapped[str] = mapped_column(sa.String(20))
    rows: Mapped[int] = mapped_column(sa.BigInteger)
    train_rows: Mapped[int] = mapped_column(sa.BigInteger)
    eval_rows: Mapped[int] = mapped_column(sa.BigInteger)
    manifest_uri: Mapped[str] = mapped_column(sa.String(1000))
    manifest_sha256: Mapped[str] = mapped_column(sa.String(64))
    manifest_size: Mapped[int] = mapped_column(sa.BigInteger)
    uploaded_by: Mapped[str] = mapped_column(sa.String(200))
    reviewed_by: Mapped[str] = mapped_column(sa.String(200), default="")
    review_reason: Mapped[str] = mapped_column(sa.Text, default="")
    reviewed_at: Mapped[dt.datetime | None] = mapped_column(
        sa.DateTime(timezone=True), nullable=True
    )
    source: Mapped[str] = mapped_column(sa.String(200), default="")
    source_event_id: Mapped[str] = mapped_column(sa.String(200), default="")
    parent_version: Mapped[str] = mapped_column(sa.String(64), default="")
    policy: Mapped[str] = mapped_column(sa.String(200), default="")
    labels: Mapped[dict] = mapped_column(sa.JSON, default=dict)
    report: Mapped[bytes] = mapped_column(sa.LargeBinary)  # serialized ValidationReport
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


class AuditRow(Base):
    __tablename__ = "intake_audit_log"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(sa.String(200))
    action: Mapped[str] = mapped_column(sa.String(50))
    subject: Mapped[str] = mapped_column(sa.String(400), index=True)
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    details: Mapped[dict] = mapped_column(sa.JSON, default=dict)


def _m0001(op: Operations) -> None:
    op.create_table(
        "intake_datasets",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("regulated", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.UniqueConstraint("tenant", "name"),
    )
    op.create_table(
        "intake_dataset_versions",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column(
            "dataset_id", _ID, sa.ForeignKey("intake_datasets.id"), nullable=False, index=True
        ),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("schema", sa.String(20), nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("train_rows", sa.BigInteger, nullable=False),
        sa.Column("eval_rows", sa.BigInteger, nullable=False),
        sa.Column("manifest_uri", sa.String(1000), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("manifest_size", sa.BigInteger, nullable=False),
        sa.Column("uploaded_by", sa.String(200), nullable=False),
        sa.Column("reviewed_by", sa.String(200), nullable=False),
        sa.Column("review_reason", sa.Text, nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("source_event_id", sa.String(200), nullable=False),
        sa.Column("parent_version", sa.String(64), nullable=False),
        sa.Column("policy", sa.String(200), nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("report", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("dataset_id", "version"),
    )
    op.create_table(
        "intake_audit_log",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(50), nullable=False),
        sa.Column("subject", sa.String(400), nullable=False, index=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
    )


INTAKE_MIGRATIONS = [Migration("0001_datasets_versions_audit", _m0001)]
