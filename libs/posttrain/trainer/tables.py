"""The trainer's tables and their migrations (component "trainer").

training_jobs holds one row per job: what to train (base model and dataset version, each
with the artifact ref it resolved to at submission), how (the full job config as YAML,
without machine paths, and the number of processes it trains with), where the job is
(state, owning worker, attempt, heartbeat, last step), and the correlation id of the
request that submitted it. training_job_progress holds one row per optimizer step per
attempt, for WatchJob and for telling afterwards which steps each attempt ran. Both live in the
trainer's database beside the event bus tables, so a state change and its event commit
in one transaction.
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


class TrainingJobRow(Base):
    __tablename__ = "training_jobs"
    __table_args__ = (sa.Index("ix_training_jobs_tenant_created", "tenant", "created_at"),)

    job_id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)  # uuid4 hex
    tenant: Mapped[str] = mapped_column(sa.String(200))
    state: Mapped[str] = mapped_column(sa.String(20), index=True)
    base_model: Mapped[str] = mapped_column(sa.String(200))
    base_weights_uri: Mapped[str] = mapped_column(sa.String(1000))
    base_weights_sha256: Mapped[str] = mapped_column(sa.String(64))
    base_weights_size: Mapped[int] = mapped_column(sa.BigInteger)
    dataset: Mapped[str] = mapped_column(sa.String(100))
    dataset_version: Mapped[str] = mapped_column(sa.String(64))
    dataset_manifest_uri: Mapped[str] = mapped_column(sa.String(1000))
    dataset_manifest_sha256: Mapped[str] = mapped_column(sa.String(64))
    dataset_manifest_size: Mapped[int] = mapped_column(sa.BigInteger)
    method: Mapped[str] = mapped_column(sa.String(20))
    # 1: trained in the worker's process; N > 1: torchrun with N processes (one per GPU).
    processes: Mapped[int] = mapped_column(sa.Integer, default=1)
    # N > 1: `processes` on each of N worker nodes, one torchrun rendezvous; the attempt's
    # leader (node 0) writes its address here, the others join in training_job_nodes.
    nodes: Mapped[int] = mapped_column(sa.Integer, default=1)
    rendezvous: Mapped[str] = mapped_column(sa.String(300), default="")
    config_yaml: Mapped[str] = mapped_column(sa.Text)
    output_name: Mapped[str] = mapped_column(sa.String(100))
    submitted_by: Mapped[str] = mapped_column(sa.String(200))
    # The submitting RPC's: the job's events and its worker's log lines carry it.
    correlation_id: Mapped[str] = mapped_column(sa.String(128), default="")
    step: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    total_steps: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    last_loss: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    error: Mapped[str] = mapped_column(sa.Text, default="")
    error_type: Mapped[str] = mapped_column(sa.String(200), default="")
    worker_id: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    attempt: Mapped[int] = mapped_column(sa.Integer, default=0)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(_TS, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    cancelled_by: Mapped[str] = mapped_column(sa.String(200), default="")
    cancel_reason: Mapped[str] = mapped_column(sa.Text, default="")
    resumed_from_step: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    artifacts: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON, default=list)
    metrics: Mapped[dict[str, float]] = mapped_column(sa.JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(_TS)
    updated_at: Mapped[dt.datetime] = mapped_column(_TS)
    started_at: Mapped[dt.datetime | None] = mapped_column(_TS, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(_TS, nullable=True)


class JobProgressRow(Base):
    """One optimizer step of one attempt, as the engine reported it."""

    __tablename__ = "training_job_progress"
    __table_args__ = (sa.Index("ix_training_job_progress_job", "job_id", "id"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("training_jobs.job_id"))
    attempt: Mapped[int] = mapped_column(sa.Integer)
    worker_id: Mapped[str] = mapped_column(sa.String(200))
    step: Mapped[int] = mapped_column(sa.BigInteger)
    total_steps: Mapped[int] = mapped_column(sa.BigInteger)
    epoch: Mapped[int] = mapped_column(sa.Integer)
    loss: Mapped[float] = mapped_column(sa.Float)
    learning_rate: Mapped[float] = mapped_column(sa.Float)
    grad_norm: Mapped[float] = mapped_column(sa.Float)
    tokens_per_second: Mapped[float] = mapped_column(sa.Float)
    eta_seconds: Mapped[float] = mapped_column(sa.Float)
    eval_loss: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    at: Mapped[dt.datetime] = mapped_column(_TS)


class JobNodeRow(Base):
    """A worker that joined an attempt of a multi-node job as node `node_rank` (1..N-1).
    The primary key makes two workers racing for one seat a conflict, not a double."""

    __tablename__ = "training_job_nodes"

    job_id: Mapped[str] = mapped_column(sa.ForeignKey("training_jobs.job_id"), primary_key=True)
    attempt: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    node_rank: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    worker_id: Mapped[str] = mapped_column(sa.String(200))
    joined_at: Mapped[dt.datetime] = mapped_column(_TS)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(_TS)


def _m0001(op: Operations) -> None:
    # Spelled out rather than taken from the models: a migration must not change when they do.
    op.create_table(
        "training_jobs",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("base_model", sa.String(200), nullable=False),
        sa.Column("base_weights_uri", sa.String(1000), nullable=False),
        sa.Column("base_weights_sha256", sa.String(64), nullable=False),
        sa.Column("base_weights_size", sa.BigInteger, nullable=False),
        sa.Column("dataset", sa.String(100), nullable=False),
        sa.Column("dataset_version", sa.String(64), nullable=False),
        sa.Column("dataset_manifest_uri", sa.String(1000), nullable=False),
        sa.Column("dataset_manifest_sha256", sa.String(64), nullable=False),
        sa.Column("dataset_manifest_size", sa.BigInteger, nullable=False),
        sa.Column("method", sa.String(20), nullable=False),
        sa.Column("config_yaml", sa.Text, nullable=False),
        sa.Column("output_name", sa.String(100), nullable=False),
        sa.Column("submitted_by", sa.String(200), nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("total_steps", sa.BigInteger, nullable=False),
        sa.Column("last_loss", sa.Float, nullable=True),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("error_type", sa.String(200), nullable=False),
        sa.Column("worker_id", sa.String(200), nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("heartbeat_at", _TS, nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("cancelled_by", sa.String(200), nullable=False),
        sa.Column("cancel_reason", sa.Text, nullable=False),
        sa.Column("resumed_from_step", sa.BigInteger, nullable=True),
        sa.Column("artifacts", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("started_at", _TS, nullable=True),
        sa.Column("finished_at", _TS, nullable=True),
    )
    op.create_index("ix_training_jobs_state", "training_jobs", ["state"])
    op.create_index("ix_training_jobs_tenant_created", "training_jobs", ["tenant", "created_at"])
    op.create_table(
        "training_job_progress",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("training_jobs.job_id"), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("worker_id", sa.String(200), nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("total_steps", sa.BigInteger, nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("loss", sa.Float, nullable=False),
        sa.Column("learning_rate", sa.Float, nullable=False),
        sa.Column("grad_norm", sa.Float, nullable=False),
        sa.Column("tokens_per_second", sa.Float, nullable=False),
        sa.Column("eta_seconds", sa.Float, nullable=False),
        sa.Column("eval_loss", sa.Float, nullable=True),
        sa.Column("at", _TS, nullable=False),
    )
    op.create_index("ix_training_job_progress_job", "training_job_progress", ["job_id", "id"])


def _m0002(op: Operations) -> None:
    op.add_column(
        "training_jobs",
        sa.Column("correlation_id", sa.String(128), nullable=False, server_default=""),
    )


def _m0003(op: Operations) -> None:
    op.add_column(
        "training_jobs",
        sa.Column("processes", sa.Integer, nullable=False, server_default="1"),
    )


def _m0004(op: Operations) -> None:
    op.add_column(
        "training_jobs", sa.Column("nodes", sa.Integer, nullable=False, server_default="1")
    )
    op.add_column(
        "training_jobs",
        sa.Column("rendezvous", sa.String(300), nullable=False, server_default=""),
    )
    op.create_table(
        "training_job_nodes",
        sa.Column("job_id", sa.String(32), sa.ForeignKey("training_jobs.job_id"), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("node_rank", sa.Integer, nullable=False),
        sa.Column("worker_id", sa.String(200), nullable=False),
        sa.Column("joined_at", _TS, nullable=False),
        sa.Column("heartbeat_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("job_id", "attempt", "node_rank"),
    )


TRAINER_MIGRATIONS = [
    Migration("0001_training_jobs_and_progress", _m0001),
    Migration("0002_training_jobs_correlation_id", _m0002),
    Migration("0003_training_jobs_processes", _m0003),
    Migration("0004_training_jobs_nodes", _m0004),
]
