"""The audit log: one row per state change of the registry, written in the transaction of
the change itself, never updated or deleted.

Subjects use lineage node ids ("model_version:support-bot:v3",
"alias:acme/support-bot/production", "base_model:Llama-3.2-1B"). An entry with no tenant
(base models) is visible to every tenant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from posttrain.db import utcnow
from posttrain.registry.tables import AuditRow


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    subject: str,
    tenant: str | None,
    reason: str = "",
    details: Mapping[str, object] | None = None,
) -> AuditRow:
    row = AuditRow(
        at=utcnow(),
        actor=actor,
        action=action,
        subject=subject,
        tenant=tenant,
        reason=reason,
        details={k: str(v) for k, v in (details or {}).items()},
    )
    session.add(row)
    return row


def visible_to(column: sa.ColumnElement, tenant_scope: str | None) -> sa.ColumnElement[bool]:
    """Rows of `tenant_scope` and shared rows; every row when the scope is None (admin)."""
    if tenant_scope is None:
        return sa.true()
    return sa.or_(column.is_(None), column == tenant_scope)


def list_entries(
    session: Session,
    *,
    tenant_scope: str | None,
    subject: str = "",
    actor: str = "",
    action: str = "",
    offset: int = 0,
    limit: int = 50,
) -> tuple[Sequence[AuditRow], int]:
    """Entries newest first, and how many match in all."""
    where = [visible_to(AuditRow.tenant, tenant_scope)]
    if subject:
        where.append(AuditRow.subject == subject)
    if actor:
        where.append(AuditRow.actor == actor)
    if action:
        where.append(AuditRow.action == action)
    total = session.scalar(sa.select(sa.func.count()).select_from(AuditRow).where(*where)) or 0
    rows = session.scalars(
        sa.select(AuditRow).where(*where).order_by(AuditRow.id.desc()).offset(offset).limit(limit)
    ).all()
    return rows, total
