"""The human review queue and the anchor sets it grows.

Every report samples a few outputs into the queue (reports.record, stratified by tag,
by seed). A rater's label is a 1..5 score on the suite's rubric, a label text, or both;
a scored label becomes an anchor item of the tenant's anchor set for that suite name
(labelling again replaces it; taking the score away removes it). The anchor set a judge
is calibrated on = the suite's seed anchors (its anchors.jsonl) + the tenant's grown
items: tenants never calibrate on, or see, each other's model outputs.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from posttrain.db import utcnow
from posttrain.evaluation import (
    AnchorItem,
    ReviewItem,
    Suite,
    anchors_from_reviews,
    apply_label,
    grow_anchor_set,
)
from posttrain.evaluator.tables import AnchorRow, ReviewItemRow
from posttrain.rpc.errors import InvalidArgument, NotFound
from posttrain.v1 import evaluation_pb2

MAX_LABEL_CHARS = 200
MAX_COMMENT_CHARS = 10_000


def item_of(row: ReviewItemRow) -> ReviewItem:
    return ReviewItem(
        id=row.id,
        report_id=row.report_id,
        case_id=row.case_id,
        prompt=row.prompt,
        output=row.output,
        reference=row.reference,
        tags=tuple(row.tags or ()),
        model_version_id=row.model_version_id,
        suite_version=row.suite_version,
        judge_score=row.judge_score,
        label=row.label,
        score=row.score,
        comment=row.comment,
        labelled_by=row.labelled_by,
    )


def item_proto(row: ReviewItemRow) -> evaluation_pb2.ReviewItem:
    return item_of(row).to_proto()


def list_items(
    session: Session,
    *,
    tenant_scope: str | None,
    unlabelled_only: bool = False,
    report_id: str = "",
    suite: str = "",
    offset: int = 0,
    limit: int = 50,
) -> tuple[list[ReviewItemRow], int]:
    where = []
    if tenant_scope is not None:
        where.append(ReviewItemRow.tenant == tenant_scope)
    if unlabelled_only:
        where += [ReviewItemRow.score.is_(None), ReviewItemRow.label == ""]
    if report_id:
        where.append(ReviewItemRow.report_id == report_id)
    if suite:
        where.append(ReviewItemRow.suite == suite)
    total = session.scalar(sa.select(sa.func.count()).select_from(ReviewItemRow).where(*where))
    rows = session.scalars(
        sa.select(ReviewItemRow)
        .where(*where)
        .order_by(ReviewItemRow.created_at, ReviewItemRow.id)
        .offset(offset)
        .limit(limit)
    ).all()
    return list(rows), total or 0


def label_item(
    session: Session,
    item_id: str,
    *,
    tenant_scope: str | None,
    labelled_by: str,
    score: int | None,
    label: str,
    comment: str,
) -> ReviewItemRow:
    """Record a rater's label (replacing an earlier one) and grow or shrink the anchor set."""
    if len(label) > MAX_LABEL_CHARS:
        raise InvalidArgument("label", f"is longer than {MAX_LABEL_CHARS} characters")
    if len(comment) > MAX_COMMENT_CHARS:
        raise InvalidArgument("comment", f"is longer than {MAX_COMMENT_CHARS} characters")
    row = session.get(ReviewItemRow, item_id, with_for_update=True) if item_id else None
    if row is None or (tenant_scope is not None and row.tenant != tenant_scope):
        raise NotFound("review item", item_id)
    try:
        labelled = apply_label(
            item_of(row), labelled_by=labelled_by, score=score, label=label, comment=comment
        )
    except ValueError as exc:
        raise InvalidArgument("score" if "score" in str(exc) else "label", str(exc)) from None
    row.score, row.label, row.comment = labelled.score, labelled.label, labelled.comment
    row.labelled_by, row.labelled_at = labelled.labelled_by, utcnow()
    key = {"tenant": row.tenant, "suite": row.suite, "anchor_id": row.id}
    anchor = session.get(AnchorRow, key)
    grown = anchors_from_reviews([labelled])
    if grown:
        if anchor is None:
            anchor = AnchorRow(**key, item={}, labelled_by="", updated_at=utcnow())
            session.add(anchor)
        anchor.item = grown[0].to_json()
        anchor.labelled_by = labelled_by
        anchor.updated_at = utcnow()
    elif anchor is not None:
        session.delete(anchor)
    return row


def grown_anchors(session: Session, tenant: str, suite: str) -> list[AnchorItem]:
    rows = session.scalars(
        sa.select(AnchorRow)
        .where(AnchorRow.tenant == tenant, AnchorRow.suite == suite)
        .order_by(AnchorRow.anchor_id)
    ).all()
    return [_anchor(row.item) for row in rows]


def anchor_set(session: Session, tenant: str, suite: Suite) -> list[AnchorItem]:
    """The suite's seed anchors grown by the tenant's scored review labels, sorted by id."""
    return grow_anchor_set(suite.anchors, grown_anchors(session, tenant, suite.name))


def _anchor(obj: dict) -> AnchorItem:
    return AnchorItem(
        id=obj["id"],
        prompt=obj["prompt"],
        answer=obj["answer"],
        human_score=obj["human_score"],
        reference=obj.get("reference"),
        labelled_by=obj.get("labelled_by", ""),
        source=obj.get("source", ""),
    )
