"""Stages as aliases: (tenant, use case, stage) -> model version, moved by Promote and
Rollback.

Concurrency: every change is a compare-and-set on the alias's revision (UPDATE ... WHERE
revision = the one read). Of two promotions racing on one alias, one wins and the other
gets AliasChanged (ABORTED), with or without an expected_revision from the caller.
Rollback: each promotion pushes onto the alias's history stack; a rollback pops the
current version and points the alias at the one below, so rolling back twice goes two
promotions back. Promotion to production needs a passing release gate (see gate.py), or
an override with a reason. Promotions to staging and production emit
deployment.requested, rollbacks too (with rollback=true).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from posttrain.db import utcnow
from posttrain.registry import audit, deployments, gate, names, versions
from posttrain.registry.emit import Emit
from posttrain.registry.errors import AliasChanged, GateNotPassed
from posttrain.registry.tables import AliasHistoryRow, AliasRow, DeploymentRow, ModelVersionRow
from posttrain.rpc.errors import FailedPrecondition, InvalidArgument, NotFound


@dataclass
class AliasView:
    row: AliasRow
    rollback_to: list[str] = field(default_factory=list)  # earlier versions, newest first

    @property
    def key(self) -> str:
        return names.alias_key(self.row.tenant, self.row.use_case, self.row.stage)


@dataclass
class Change:
    """What Promote or Rollback did. `changed` is False when the alias already pointed at
    the version (a no-op: nothing audited, nothing emitted)."""

    alias: AliasView
    changed: bool
    deployment: DeploymentRow | None = None
    gate_overridden: bool = False


def check_alias_args(tenant: str, use_case: str, stage: str) -> None:
    names.check(names.USE_CASE, use_case, "use_case", "use case")
    names.check(names.TENANT, tenant, "tenant", "tenant")
    names.check_stage(stage)


def get(session: Session, *, tenant: str, use_case: str, stage: str) -> AliasView:
    check_alias_args(tenant, use_case, stage)
    row = _find(session, tenant, use_case, stage)
    if row is None:
        raise NotFound("alias", names.alias_key(tenant, use_case, stage))
    return _view(session, row)


def list_aliases(
    session: Session,
    *,
    tenant: str | None,
    use_case: str = "",
    model_version_id: str = "",
    offset: int = 0,
    limit: int = 50,
) -> tuple[list[AliasView], int]:
    where = []
    if tenant is not None:
        where.append(AliasRow.tenant == tenant)
    if use_case:
        where.append(AliasRow.use_case == use_case)
    if model_version_id:
        where.append(AliasRow.model_version_id == model_version_id)
    total = session.scalar(sa.select(sa.func.count()).select_from(AliasRow).where(*where)) or 0
    rows = session.scalars(
        sa.select(AliasRow)
        .where(*where)
        .order_by(AliasRow.tenant, AliasRow.use_case, AliasRow.stage)
        .offset(offset)
        .limit(limit)
    ).all()
    return [_view(session, r) for r in rows], total


def promote(
    session: Session,
    *,
    version_id: str,
    tenant: str,
    use_case: str,
    stage: str,
    actor: str,
    emit: Emit,
    reason: str = "",
    override_gate: bool = False,
    expected_revision: int = 0,
    tenant_scope: str | None = None,
) -> Change:
    """Point the alias at the version. Production needs the gate to pass, or
    override_gate with a non-empty reason (the caller checks who may override)."""
    check_alias_args(tenant, use_case, stage)
    _check_revision(expected_revision)
    version = versions.get(session, version_id, tenant_scope=tenant_scope, field="model_version_id")
    key = names.alias_key(tenant, use_case, stage)
    if version.tenant != tenant:
        raise FailedPrecondition(
            f"{version.id} belongs to tenant {version.tenant!r}; it can't be promoted to "
            f"alias {key} of tenant {tenant!r}"
        )
    if version.archived_at is not None:
        raise FailedPrecondition(f"{version.id} is archived; archived versions can't be promoted")
    alias = _find(session, tenant, use_case, stage)
    if alias is not None and alias.model_version_id == version.id:
        if expected_revision and expected_revision != alias.revision:
            raise AliasChanged(key, alias.revision, expected_revision)
        return Change(_view(session, alias), changed=False)
    overridden = False
    verdict = gate.status(session, version.id)
    if stage == "production" and not verdict.passed:
        if not override_gate:
            raise GateNotPassed(version.id, key, verdict.reasons)
        if not reason.strip():
            raise InvalidArgument(
                "reason", "is required to override the release gate (it goes to the audit log)"
            )
        overridden = True

    previous = alias.model_version_id if alias is not None else ""
    alias = _compare_and_set(
        session, alias, tenant, use_case, stage, version.id, actor, expected_revision
    )
    now = utcnow()
    session.add(
        AliasHistoryRow(
            alias_id=alias.id,
            model_version_id=version.id,
            promoted_at=now,
            promoted_by=actor,
            gate_overridden=overridden,
            reason=reason,
        )
    )
    deployment = deployments.request(
        session,
        alias=alias,
        version=version,
        previous_version_id=previous,
        rollback=False,
        actor=actor,
        reason=reason,
        emit=emit,
    )
    audit.record(
        session,
        actor=actor,
        action="alias.promoted_gate_overridden" if overridden else "alias.promoted",
        subject=names.node_id(names.ALIAS, key),
        tenant=tenant,
        reason=reason,
        details={
            "model_version_id": version.id,
            "previous_model_version_id": previous,
            "revision": alias.revision,
            "gate_verdict": verdict.verdict or "none",
            "gate_reasons": "; ".join(verdict.reasons),
            "deployment_id": deployment.id if deployment else "",
        },
    )
    if overridden:
        # Also on the version, so its own audit trail shows it skipped the gate.
        audit.record(
            session,
            actor=actor,
            action="model_version.gate_overridden",
            subject=names.node_id(names.MODEL_VERSION, version.id),
            tenant=tenant,
            reason=reason,
            details={"alias": key, "gate_reasons": "; ".join(verdict.reasons)},
        )
    return Change(_view(session, alias), True, deployment, overridden)


def rollback(
    session: Session,
    *,
    tenant: str,
    use_case: str,
    stage: str,
    actor: str,
    reason: str,
    emit: Emit,
    expected_revision: int = 0,
) -> Change:
    """Point the alias back at the version it was promoted to before the current one."""
    check_alias_args(tenant, use_case, stage)
    _check_revision(expected_revision)
    if not reason.strip():
        raise InvalidArgument("reason", "is required for a rollback (it goes to the audit log)")
    key = names.alias_key(tenant, use_case, stage)
    alias = _find(session, tenant, use_case, stage)
    if alias is None:
        raise NotFound("alias", key)
    if expected_revision and expected_revision != alias.revision:
        raise AliasChanged(key, alias.revision, expected_revision)
    stack = _stack(session, alias.id)
    if len(stack) < 2:
        raise FailedPrecondition(
            f"alias {key} has no earlier version to roll back to (it points at "
            f"{alias.model_version_id}, and no earlier promotion is left on its history)"
        )
    current, target_entry = stack[0], stack[1]
    target = session.get(ModelVersionRow, target_entry.model_version_id)
    if target is None or target.archived_at is not None:
        raise FailedPrecondition(
            f"alias {key} would roll back to {target_entry.model_version_id}, which is archived; "
            f"promote a version explicitly instead"
        )
    previous = alias.model_version_id
    alias = _compare_and_set(session, alias, tenant, use_case, stage, target.id, actor, 0)
    current.rolled_back_at = utcnow()
    current.rolled_back_by = actor
    deployment = deployments.request(
        session,
        alias=alias,
        version=target,
        previous_version_id=previous,
        rollback=True,
        actor=actor,
        reason=reason,
        emit=emit,
    )
    audit.record(
        session,
        actor=actor,
        action="alias.rolled_back",
        subject=names.node_id(names.ALIAS, key),
        tenant=tenant,
        reason=reason,
        details={
            "model_version_id": target.id,
            "previous_model_version_id": previous,
            "revision": alias.revision,
            "deployment_id": deployment.id if deployment else "",
        },
    )
    return Change(_view(session, alias), True, deployment)


# ------------------------------------------------------------------ the compare-and-set


def compare_and_set(session: Session, alias: AliasRow, version_id: str, actor: str) -> AliasRow:
    """Move `alias` (as read earlier, revision and all) to `version_id`, or AliasChanged
    if someone else moved it since. Exposed for the tests of the race itself."""
    return _compare_and_set(
        session, alias, alias.tenant, alias.use_case, alias.stage, version_id, actor, 0
    )


def _compare_and_set(
    session: Session,
    alias: AliasRow | None,
    tenant: str,
    use_case: str,
    stage: str,
    version_id: str,
    actor: str,
    expected_revision: int,
) -> AliasRow:
    key = names.alias_key(tenant, use_case, stage)
    now = utcnow()
    if alias is None:
        if expected_revision:
            raise AliasChanged(key, 0, expected_revision)
        alias = AliasRow(
            tenant=tenant,
            use_case=use_case,
            stage=stage,
            model_version_id=version_id,
            revision=1,
            updated_at=now,
            updated_by=actor,
        )
        session.add(alias)
        try:
            session.flush()
        except IntegrityError:
            # Another promotion created it first (unique tenant/use_case/stage).
            raise AliasChanged(key, None) from None
        return alias
    if expected_revision and expected_revision != alias.revision:
        raise AliasChanged(key, alias.revision, expected_revision)
    read_revision = alias.revision
    result = session.execute(
        sa.update(AliasRow)
        .where(AliasRow.id == alias.id, AliasRow.revision == read_revision)
        .values(
            model_version_id=version_id,
            revision=read_revision + 1,
            updated_at=now,
            updated_by=actor,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.expire(alias)
        now_at = session.scalar(sa.select(AliasRow.revision).where(AliasRow.id == alias.id))
        raise AliasChanged(key, now_at, expected_revision or read_revision)
    session.expire(alias)  # reload what was just written
    return alias


# ------------------------------------------------------------------ helpers


def _find(session: Session, tenant: str, use_case: str, stage: str) -> AliasRow | None:
    return session.scalar(
        sa.select(AliasRow).where(
            AliasRow.tenant == tenant, AliasRow.use_case == use_case, AliasRow.stage == stage
        )
    )


def _stack(session: Session, alias_id: int) -> Sequence[AliasHistoryRow]:
    """The promotions not rolled back, newest (= current) first."""
    return session.scalars(
        sa.select(AliasHistoryRow)
        .where(AliasHistoryRow.alias_id == alias_id, AliasHistoryRow.rolled_back_at.is_(None))
        .order_by(AliasHistoryRow.id.desc())
    ).all()


def _view(session: Session, alias: AliasRow) -> AliasView:
    return AliasView(alias, [h.model_version_id for h in _stack(session, alias.id)[1:]])


def _check_revision(expected_revision: int) -> None:
    if expected_revision < 0:
        raise InvalidArgument("expected_revision", f"must be >= 0 (got {expected_revision})")
