"""The evaluator service's tables: suites, reports, the review queue, anchor items grown
from review labels, and cached judge calibrations."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic.operations import Operations
from sqlalchemy.orm import Mapped, mapped_column

from posttrain.db import Base, Migration

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
REPORT_UNIQUE = "uq_evaluator_reports_tenant_version_suite_seed"


class SuiteRow(Base):
    """One stored suite version (its files are the folder artifact suites/<name>/<version>)."""

    __tablename__ = "evaluator_suites"
    __table_args__ = (sa.UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    version: Mapped[str] = mapped_column(sa.String(64))
    label: Mapped[str] = mapped_column(sa.String(200), default="")
    description: Mapped[str] = mapped_column(sa.Text, default="")
    cases: Mapped[int] = mapped_column(sa.Integer)
    tags: Mapped[list] = mapped_column(sa.JSON, default=list)
    gate_policy: Mapped[str] = mapped_column(sa.String(200), default="")  # name@version
    anchors: Mapped[int] = mapped_column(sa.Integer, default=0)
    manifest_uri: Mapped[str] = mapped_column(sa.String(1000))
    manifest_sha256: Mapped[str] = mapped_column(sa.String(64))
    manifest_size: Mapped[int] = mapped_column(sa.BigInteger)
    builtin: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    uploaded_by: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


class ReportRow(Base):
    """One evaluation report. At most one per (model version, suite version, seed): the
    guard that makes a redelivered model.registered (under any event id) a no-op."""

    __tablename__ = "evaluator_reports"
    __table_args__ = (
        sa.UniqueConstraint(
            "tenant", "model_version_id", "suite_version", "seed", name=REPORT_UNIQUE
        ),
    )

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)  # "eval-<hash>"
    tenant: Mapped[str] = mapped_column(sa.String(200), index=True)
    model_version_id: Mapped[str] = mapped_column(sa.String(200), index=True)
    suite: Mapped[str] = mapped_column(sa.String(64))
    suite_version: Mapped[str] = mapped_column(sa.String(64))
    suite_base_version: Mapped[str] = mapped_column(sa.String(64))  # before max_cases_per_tag
    seed: Mapped[int] = mapped_column(sa.BigInteger)
    verdict: Mapped[str] = mapped_column(sa.String(10))  # PASS | FAIL
    reasons: Mapped[list] = mapped_column(sa.JSON, default=list)
    metrics: Mapped[dict] = mapped_column(sa.JSON, default=dict)  # {name[@tag]: value}
    judge_id: Mapped[str] = mapped_column(sa.String(300), default="")
    judge_version: Mapped[str] = mapped_column(sa.String(100), default="")
    judge_trusted: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    anchor_set_version: Mapped[str] = mapped_column(sa.String(64), default="")
    gate_policy: Mapped[str] = mapped_column(sa.String(200), default="")
    code_version: Mapped[str] = mapped_column(sa.String(200), default="")
    production_model_version_id: Mapped[str] = mapped_column(sa.String(200), default="")
    production_report_id: Mapped[str] = mapped_column(sa.String(64), default="")
    loaded: Mapped[bool] = mapped_column(sa.Boolean, default=True)  # False: model unloadable
    artifact: Mapped[dict] = mapped_column(sa.JSON)  # folder manifest ref
    json_report: Mapped[dict] = mapped_column(sa.JSON)  # report.json blob ref
    html_report: Mapped[dict] = mapped_column(sa.JSON)  # report.html blob ref
    trigger: Mapped[str] = mapped_column(sa.String(40))  # model.registered|RunEvaluation|baseline
    requested_by: Mapped[str] = mapped_column(sa.String(300), default="")
    report: Mapped[bytes] = mapped_column(sa.LargeBinary)  # serialized EvaluationReport
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), index=True)


class ReviewItemRow(Base):
    """A sampled output waiting for (or holding) a human label."""

    __tablename__ = "evaluator_review_items"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)  # "rev-<hash>"
    tenant: Mapped[str] = mapped_column(sa.String(200), index=True)
    report_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    model_version_id: Mapped[str] = mapped_column(sa.String(200))
    suite: Mapped[str] = mapped_column(sa.String(64))
    suite_version: Mapped[str] = mapped_column(sa.String(64))
    case_id: Mapped[str] = mapped_column(sa.String(128))
    prompt: Mapped[list] = mapped_column(sa.JSON)  # chat messages
    output: Mapped[str] = mapped_column(sa.Text)
    reference: Mapped[dict | list | str | None] = mapped_column(sa.JSON, nullable=True)
    tags: Mapped[list] = mapped_column(sa.JSON, default=list)
    judge_score: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    label: Mapped[str] = mapped_column(sa.String(200), default="")
    score: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    comment: Mapped[str] = mapped_column(sa.Text, default="")
    labelled_by: Mapped[str] = mapped_column(sa.String(200), default="")
    labelled_at: Mapped[dt.datetime | None] = mapped_column(
        sa.DateTime(timezone=True), nullable=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


class AnchorRow(Base):
    """An anchor item grown from a scored review label, per tenant and suite name. The
    anchor set a judge is calibrated on = the suite's seed anchors + these rows."""

    __tablename__ = "evaluator_anchors"

    tenant: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    suite: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    anchor_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    item: Mapped[dict] = mapped_column(sa.JSON)  # AnchorItem.to_json()
    labelled_by: Mapped[str] = mapped_column(sa.String(200))
    updated_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


class CalibrationRow(Base):
    """A judge's calibration on one anchor set, rubric and trust policy: computed once
    (an LLM judge grades every anchor item), reused by every evaluation after."""

    __tablename__ = "evaluator_calibrations"
    __table_args__ = (
        sa.UniqueConstraint("judge_id", "judge_version", "anchor_set_version", "context_sha256"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    judge_id: Mapped[str] = mapped_column(sa.String(300))
    judge_version: Mapped[str] = mapped_column(sa.String(100))
    anchor_set_version: Mapped[str] = mapped_column(sa.String(64))
    context_sha256: Mapped[str] = mapped_column(sa.String(64))  # of the rubric and the policy
    calibration: Mapped[dict] = mapped_column(sa.JSON)  # Calibration.to_json()
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


def _m0001(op: Operations) -> None:
    op.create_table(
        "evaluator_suites",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("cases", sa.Integer, nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("gate_policy", sa.String(200), nullable=False),
        sa.Column("anchors", sa.Integer, nullable=False),
        sa.Column("manifest_uri", sa.String(1000), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("manifest_size", sa.BigInteger, nullable=False),
        sa.Column("builtin", sa.Boolean, nullable=False),
        sa.Column("uploaded_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("name", "version"),
    )
    op.create_table(
        "evaluator_reports",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(200), nullable=False, index=True),
        sa.Column("model_version_id", sa.String(200), nullable=False, index=True),
        sa.Column("suite", sa.String(64), nullable=False),
        sa.Column("suite_version", sa.String(64), nullable=False),
        sa.Column("suite_base_version", sa.String(64), nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("verdict", sa.String(10), nullable=False),
        sa.Column("reasons", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("judge_id", sa.String(300), nullable=False),
        sa.Column("judge_version", sa.String(100), nullable=False),
        sa.Column("judge_trusted", sa.Boolean, nullable=False),
        sa.Column("anchor_set_version", sa.String(64), nullable=False),
        sa.Column("gate_policy", sa.String(200), nullable=False),
        sa.Column("code_version", sa.String(200), nullable=False),
        sa.Column("production_model_version_id", sa.String(200), nullable=False),
        sa.Column("production_report_id", sa.String(64), nullable=False),
        sa.Column("loaded", sa.Boolean, nullable=False),
        sa.Column("artifact", sa.JSON, nullable=False),
        sa.Column("json_report", sa.JSON, nullable=False),
        sa.Column("html_report", sa.JSON, nullable=False),
        sa.Column("trigger", sa.String(40), nullable=False),
        sa.Column("requested_by", sa.String(300), nullable=False),
        sa.Column("report", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.UniqueConstraint("model_version_id", "suite_version", "seed"),
    )
    op.create_table(
        "evaluator_review_items",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(200), nullable=False, index=True),
        sa.Column("report_id", sa.String(64), nullable=False, index=True),
        sa.Column("model_version_id", sa.String(200), nullable=False),
        sa.Column("suite", sa.String(64), nullable=False),
        sa.Column("suite_version", sa.String(64), nullable=False),
        sa.Column("case_id", sa.String(128), nullable=False),
        sa.Column("prompt", sa.JSON, nullable=False),
        sa.Column("output", sa.Text, nullable=False),
        sa.Column("reference", sa.JSON, nullable=True),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("judge_score", sa.Float, nullable=True),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("score", sa.Integer, nullable=True),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("labelled_by", sa.String(200), nullable=False),
        sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "evaluator_anchors",
        sa.Column("tenant", sa.String(200), primary_key=True),
        sa.Column("suite", sa.String(64), primary_key=True),
        sa.Column("anchor_id", sa.String(64), primary_key=True),
        sa.Column("item", sa.JSON, nullable=False),
        sa.Column("labelled_by", sa.String(200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "evaluator_calibrations",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("judge_id", sa.String(300), nullable=False),
        sa.Column("judge_version", sa.String(100), nullable=False),
        sa.Column("anchor_set_version", sa.String(64), nullable=False),
        sa.Column("context_sha256", sa.String(64), nullable=False),
        sa.Column("calibration", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("judge_id", "judge_version", "anchor_set_version", "context_sha256"),
    )


def _m0002(op: Operations) -> None:
    """One report per tenant of (version, suite version, seed): base models ("base:<name>")
    are shared, and each tenant evaluates them with its own anchors and review queue."""
    old = ["model_version_id", "suite_version", "seed"]
    new = ["tenant", *old]
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":  # no ALTER of constraints: the table is copied
        # 0001's constraint has no name; the convention names it when reflected.
        convention = {"uq": "uq_%(table_name)s_%(column_0_N_name)s"}
        with op.batch_alter_table(
            "evaluator_reports", recreate="always", naming_convention=convention
        ) as batch:
            batch.drop_constraint("uq_evaluator_reports_" + "_".join(old), type_="unique")
            batch.create_unique_constraint(REPORT_UNIQUE, new)
        return
    for constraint in sa.inspect(bind).get_unique_constraints("evaluator_reports"):
        if constraint["column_names"] == old:
            op.drop_constraint(constraint["name"], "evaluator_reports", type_="unique")
    op.create_unique_constraint(REPORT_UNIQUE, "evaluator_reports", new)


EVALUATOR_MIGRATIONS = [
    Migration("0001_suites_reports_reviews_anchors", _m0001),
    Migration("0002_reports_unique_per_tenant", _m0002),
]
