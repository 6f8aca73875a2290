"""The comparison runs' tables and their migrations (component "comparison"), in the
trainer's database beside training_jobs: a comparison's candidates are ordinary training
jobs, and a candidate row only points at its job.

comparisons: what is compared (base model, dataset version, budget, serving context, the
rules YAML), its state, and at the end the recommendation and the report's folder.
comparison_candidates: one row per candidate: its spec, its job, how far the collector
got with it (TRAINING -> EVALUATING -> MEASURED, or FAILED / CANCELLED / OUT_OF_BUDGET),
and the measurement it ended with (CandidateMeasurement as JSON).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from alembic.operations import Operations
from sqlalchemy.orm import Mapped, mapped_column

from posttrain.db import Base, Migration

_TS = sa.DateTime(timezone=True)


class ComparisonRow(Base):
    __tablename__ = "comparisons"
    __table_args__ = (sa.Index("ix_comparisons_tenant_created", "tenant", "created_at"),)

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(200))
    name: Mapped[str] = mapped_column(sa.String(100))
    state: Mapped[str] = mapped_column(sa.String(20), index=True)
    base_model: Mapped[str] = mapped_column(sa.String(200))
    dataset: Mapped[str] = mapped_column(sa.String(100))
    dataset_version: Mapped[str] = mapped_column(sa.String(64))
    dataset_rows: Mapped[int] = mapped_column(sa.BigInteger)
    budget: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    serving: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    rules_yaml: Mapped[str] = mapped_column(sa.Text)
    rules_source: Mapped[str] = mapped_column(sa.String(200))
    created_by: Mapped[str] = mapped_column(sa.String(200))
    correlation_id: Mapped[str] = mapped_column(sa.String(128))
    recommendation: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    report: Mapped[dict[str, Any]] = mapped_column(sa.JSON)  # ArtifactRef fields; {} until done
    created_at: Mapped[dt.datetime] = mapped_column(_TS)
    updated_at: Mapped[dt.datetime] = mapped_column(_TS)
    finished_at: Mapped[dt.datetime | None] = mapped_column(_TS, nullable=True)


class CandidateRow(Base):
    __tablename__ = "comparison_candidates"

    comparison_id: Mapped[str] = mapped_column(sa.ForeignKey("comparisons.id"), primary_key=True)
    position: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(40))
    method: Mapped[str] = mapped_column(sa.String(20))
    method_config: Mapped[dict[str, str]] = mapped_column(sa.JSON)
    hyperparameters: Mapped[dict[str, str]] = mapped_column(sa.JSON)
    job_id: Mapped[str] = mapped_column(sa.String(32))
    output_name: Mapped[str] = mapped_column(sa.String(100))
    state: Mapped[str] = mapped_column(sa.String(20))
    model_version_id: Mapped[str] = mapped_column(sa.String(200))
    evaluation_report_id: Mapped[str] = mapped_column(sa.String(64))
    gate_verdict: Mapped[str] = mapped_column(sa.String(10))
    note: Mapped[str] = mapped_column(sa.Text)
    measurement: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    evaluating_since: Mapped[dt.datetime | None] = mapped_column(_TS, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(_TS)


def _m0001(op: Operations) -> None:
    # Spelled out rather than taken from the models: a migration must not change when they do.
    op.create_table(
        "comparisons",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("base_model", sa.String(200), nullable=False),
        sa.Column("dataset", sa.String(100), nullable=False),
        sa.Column("dataset_version", sa.String(64), nullable=False),
        sa.Column("dataset_rows", sa.BigInteger, nullable=False),
        sa.Column("budget", sa.JSON, nullable=False),
        sa.Column("serving", sa.JSON, nullable=False),
        sa.Column("rules_yaml", sa.Text, nullable=False),
        sa.Column("rules_source", sa.String(200), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("correlation_id", sa.String(128), nullable=False),
        sa.Column("recommendation", sa.JSON, nullable=False),
        sa.Column("report", sa.JSON, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("finished_at", _TS, nullable=True),
    )
    op.create_index("ix_comparisons_state", "comparisons", ["state"])
    op.create_index("ix_comparisons_tenant_created", "comparisons", ["tenant", "created_at"])
    op.create_table(
        "comparison_candidates",
        sa.Column(
            "comparison_id", sa.String(32), sa.ForeignKey("comparisons.id"), primary_key=True
        ),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("method", sa.String(20), nullable=False),
        sa.Column("method_config", sa.JSON, nullable=False),
        sa.Column("hyperparameters", sa.JSON, nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("output_name", sa.String(100), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("model_version_id", sa.String(200), nullable=False),
        sa.Column("evaluation_report_id", sa.String(64), nullable=False),
        sa.Column("gate_verdict", sa.String(10), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("measurement", sa.JSON, nullable=False),
        sa.Column("evaluating_since", _TS, nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
    )


COMPARISON_MIGRATIONS = [Migration("0001_comparisons_and_candidates", _m0001)]
