"""The gateway's tables and their migrations (component "gateway").

They live in the gateway service's database beside the event bus tables, so that a
deployment's route change and its deployment.completed (outbox) commit together.

  gateway_base_models  base model folders this gateway downloaded (by manifest sha256)
                       and the multi-adapter Triton model serving each
  gateway_deployments  every deployment.requested handled: live, superseded or failed
  gateway_routes       (tenant, use case, stage) -> the deployment serving it now
  gateway_experiments  A/B experiments on a route: variants, shares, stopped arms
  gateway_inferences   one row per served request, with its feedback once it arrives and
                       the experiment judge's score where one graded it (never the texts)
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

LIVE = "live"  # the route of its (tenant, use case, stage) points at it
SUPERSEDED = "superseded"  # was live; a later deployment took the route (still installed)
FAILED = "failed"  # never went live; `error` says why


class BaseModelRow(Base):
    __tablename__ = "gateway_base_models"

    sha256: Mapped[str] = mapped_column(sa.String(64), primary_key=True)  # manifest sha256
    name: Mapped[str] = mapped_column(sa.String(200), index=True)
    path: Mapped[str] = mapped_column(sa.String(1000))  # the local folder Triton reads
    triton_model: Mapped[str] = mapped_column(sa.String(200))
    stream_model: Mapped[str] = mapped_column(sa.String(200))  # "" = no decoupled twin
    created_at: Mapped[dt.datetime] = mapped_column(_TS)


class DeploymentRow(Base):
    __tablename__ = "gateway_deployments"

    id: Mapped[str] = mapped_column(sa.String(100), primary_key=True)  # the registry's id
    tenant: Mapped[str] = mapped_column(sa.String(200), index=True)
    use_case: Mapped[str] = mapped_column(sa.String(100))
    stage: Mapped[str] = mapped_column(sa.String(20))
    model_version_id: Mapped[str] = mapped_column(sa.String(200), index=True)
    kind: Mapped[str] = mapped_column(sa.String(20))  # adapter | merged | full
    base_model: Mapped[str] = mapped_column(sa.String(200))
    artifact_sha256: Mapped[str] = mapped_column(sa.String(64))
    triton_model: Mapped[str] = mapped_column(sa.String(200))
    lora_name: Mapped[str] = mapped_column(sa.String(200))
    stream_model: Mapped[str] = mapped_column(sa.String(200))
    status: Mapped[str] = mapped_column(sa.String(20))  # live | superseded | failed
    error: Mapped[str] = mapped_column(sa.Text)
    rollback: Mapped[bool] = mapped_column(sa.Boolean)
    requested_by: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[dt.datetime] = mapped_column(_TS)
    seconds: Mapped[float] = mapped_column(sa.Float)  # how long making it live took


class RouteRow(Base):
    __tablename__ = "gateway_routes"
    __table_args__ = (sa.UniqueConstraint("tenant", "use_case", "stage", name="uq_gateway_route"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(sa.String(200))
    use_case: Mapped[str] = mapped_column(sa.String(100))
    stage: Mapped[str] = mapped_column(sa.String(20))
    deployment_id: Mapped[str] = mapped_column(sa.String(100))
    model_version_id: Mapped[str] = mapped_column(sa.String(200))
    base_model: Mapped[str] = mapped_column(sa.String(200))
    triton_model: Mapped[str] = mapped_column(sa.String(200))
    lora_name: Mapped[str] = mapped_column(sa.String(200))
    stream_model: Mapped[str] = mapped_column(sa.String(200))
    updated_at: Mapped[dt.datetime] = mapped_column(_TS)


class ExperimentRow(Base):
    __tablename__ = "gateway_experiments"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(200), index=True)
    use_case: Mapped[str] = mapped_column(sa.String(120))  # as Generate names it ("x/staging")
    # [{name, model_version_id, share, triton_model, lora_name, stream_model, deployment_id}]
    variants: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON)
    running: Mapped[bool] = mapped_column(sa.Boolean, index=True)
    max_policy_incident_rate: Mapped[float] = mapped_column(sa.Float)  # 0 = no guardrail
    stopped_arms: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON)  # [{variant, reason, at}]
    created_by: Mapped[str] = mapped_column(sa.String(200))
    started_at: Mapped[dt.datetime] = mapped_column(_TS)
    stopped_at: Mapped[dt.datetime | None] = mapped_column(_TS, nullable=True)
    stopped_by: Mapped[str] = mapped_column(sa.String(200))
    stop_reason: Mapped[str] = mapped_column(sa.Text)


class InferenceRow(Base):
    __tablename__ = "gateway_inferences"

    request_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(200), index=True)
    use_case: Mapped[str] = mapped_column(sa.String(120))
    deployment_id: Mapped[str] = mapped_column(sa.String(100))
    model_version_id: Mapped[str] = mapped_column(sa.String(200))
    experiment_id: Mapped[str | None] = mapped_column(sa.String(64), nullable=True, index=True)
    variant: Mapped[str] = mapped_column(sa.String(100))
    user_key_hash: Mapped[str] = mapped_column(sa.String(64))
    prompt_tokens: Mapped[int] = mapped_column(sa.Integer)
    completion_tokens: Mapped[int] = mapped_column(sa.Integer)
    latency_ms: Mapped[float] = mapped_column(sa.Float)
    cost: Mapped[float] = mapped_column(sa.Float)
    finish_reason: Mapped[str] = mapped_column(sa.String(20))
    created_at: Mapped[dt.datetime] = mapped_column(_TS)
    success: Mapped[bool | None] = mapped_column(sa.Boolean, nullable=True)  # None: no feedback
    policy_incident: Mapped[bool | None] = mapped_column(sa.Boolean, nullable=True)
    human_intervention: Mapped[bool | None] = mapped_column(sa.Boolean, nullable=True)
    rating: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    feedback_at: Mapped[dt.datetime | None] = mapped_column(_TS, nullable=True)
    feedback_by: Mapped[str] = mapped_column(sa.String(200))
    # The experiment judge's grade 1..5 (None: not sampled, not graded yet, or no grade),
    # and which judge gave it: a judge change mid-experiment shows in the report.
    judge_score: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    judge_id: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    judge_version: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)


def _m0001(op: Operations) -> None:
    # Spelled out rather than taken from the models: a migration must not change when they do.
    op.create_table(
        "gateway_base_models",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, index=True),
        sa.Column("path", sa.String(1000), nullable=False),
        sa.Column("triton_model", sa.String(200), nullable=False),
        sa.Column("stream_model", sa.String(200), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "gateway_deployments",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("tenant", sa.String(200), nullable=False, index=True),
        sa.Column("use_case", sa.String(100), nullable=False),
        sa.Column("stage", sa.String(20), nullable=False),
        sa.Column("model_version_id", sa.String(200), nullable=False, index=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("base_model", sa.String(200), nullable=False),
        sa.Column("artifact_sha256", sa.String(64), nullable=False),
        sa.Column("triton_model", sa.String(200), nullable=False),
        sa.Column("lora_name", sa.String(200), nullable=False),
        sa.Column("stream_model", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("rollback", sa.Boolean, nullable=False),
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
    )
    op.create_table(
        "gateway_routes",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("use_case", sa.String(100), nullable=False),
        sa.Column("stage", sa.String(20), nullable=False),
        sa.Column("deployment_id", sa.String(100), nullable=False),
        sa.Column("model_version_id", sa.String(200), nullable=False),
        sa.Column("base_model", sa.String(200), nullable=False),
        sa.Column("triton_model", sa.String(200), nullable=False),
        sa.Column("lora_name", sa.String(200), nullable=False),
        sa.Column("stream_model", sa.String(200), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.UniqueConstraint("tenant", "use_case", "stage", name="uq_gateway_route"),
    )
    op.create_table(
        "gateway_experiments",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(200), nullable=False, index=True),
        sa.Column("use_case", sa.String(120), nullable=False),
        sa.Column("variants", sa.JSON, nullable=False),
        sa.Column("running", sa.Boolean, nullable=False, index=True),
        sa.Column("max_policy_incident_rate", sa.Float, nullable=False),
        sa.Column("stopped_arms", sa.JSON, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("stopped_at", _TS, nullable=True),
        sa.Column("stopped_by", sa.String(200), nullable=False),
        sa.Column("stop_reason", sa.Text, nullable=False),
    )
    op.create_table(
        "gateway_inferences",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(200), nullable=False, index=True),
        sa.Column("use_case", sa.String(120), nullable=False),
        sa.Column("deployment_id", sa.String(100), nullable=False),
        sa.Column("model_version_id", sa.String(200), nullable=False),
        sa.Column("experiment_id", sa.String(64), nullable=True, index=True),
        sa.Column("variant", sa.String(100), nullable=False),
        sa.Column("user_key_hash", sa.String(64), nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("cost", sa.Float, nullable=False),
        sa.Column("finish_reason", sa.String(20), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("success", sa.Boolean, nullable=True),
        sa.Column("policy_incident", sa.Boolean, nullable=True),
        sa.Column("human_intervention", sa.Boolean, nullable=True),
        sa.Column("rating", sa.Float, nullable=True),
        sa.Column("feedback_at", _TS, nullable=True),
        sa.Column("feedback_by", sa.String(200), nullable=False),
    )


def _m0002(op: Operations) -> None:
    op.add_column("gateway_inferences", sa.Column("judge_score", sa.Float, nullable=True))
    op.add_column("gateway_inferences", sa.Column("judge_id", sa.String(200), nullable=True))
    op.add_column("gateway_inferences", sa.Column("judge_version", sa.String(100), nullable=True))


GATEWAY_MIGRATIONS = [
    Migration("0001_gateway_tables", _m0001),
    Migration("0002_inference_judge_score", _m0002),
]
