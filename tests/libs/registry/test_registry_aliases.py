"""Promotion, the release gate, overrides, rollback, the alias race, archiving and
deployments: the core on SQLite and PostgreSQL, no broker."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from registry_factories import Recorder, promote, seed_version
from sqlalchemy.orm import Session

from posttrain.db import session_scope
from posttrain.events import topics
from posttrain.registry import aliases, audit, deployments, versions
from posttrain.registry.errors import AliasChanged, GateNotPassed
from posttrain.registry.tables import AliasRow
from posttrain.rpc.errors import FailedPrecondition, InvalidArgument, NotFound
from posttrain.v1 import events_pb2


def test_production_needs_a_verdict_and_refuses_a_failing_one_with_its_reasons(engine):
    unevaluated = seed_version(engine)
    with pytest.raises(GateNotPassed) as err:
        promote(engine, unevaluated, use_case="support")
    assert f"no release-gate verdict from the evaluator for {unevaluated}" in str(err.value)

    failing = seed_version(engine, passed=False)
    with pytest.raises(GateNotPassed) as err:
        promote(engine, failing, use_case="support")
    assert "the release gate FAILED in suite 'release'" in str(err.value)
    with session_scope(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(AliasRow)) == 0

    # Candidate and staging have no gate.
    assert promote(engine, failing, use_case="support", stage="staging").changed


def test_a_passing_version_is_promoted_and_the_serving_layer_is_asked_to_deploy_it(engine):
    vid = seed_version(engine, passed=True)
    emitted = Recorder()
    change = promote(engine, vid, use_case="support", emit=emitted, reason="weekly release")
    assert change.changed and not change.gate_overridden
    assert (change.alias.row.model_version_id, change.alias.row.revision) == (vid, 1)
    [request] = emitted.of(topics.DEPLOYMENT_REQUESTED)
    assert request.deployment_id == change.deployment.id
    assert (request.alias, request.tenant, request.model_version_id) == (
        "support/production",
        "acme",
        vid,
    )
    assert not request.rollback and request.requested_by == "ops"
    assert request.base_model_weights.sha256 and request.artifacts[0].sha256
    assert emitted.events[0][2] == "acme/support/production"  # keyed per alias: ordered

    # Promoting it again is a no-op: nothing new emitted or audited.
    again = promote(engine, vid, use_case="support", emit=emitted)
    assert not again.changed and again.alias.row.revision == 1
    assert len(emitted.events) == 1
    # Candidates are not deployed.
    candidate = Recorder()
    promote(engine, seed_version(engine), use_case="support", stage="candidate", emit=candidate)
    assert candidate.events == []


def test_an_override_needs_a_reason_and_is_audited(engine):
    vid = seed_version(engine, passed=False)
    with pytest.raises(InvalidArgument) as err:
        promote(engine, vid, use_case="support", override_gate=True, reason="  ")
    assert err.value.field == "reason"
    change = promote(
        engine, vid, use_case="support", override_gate=True, reason="hotfix for INC-42"
    )
    assert change.gate_overridden
    with session_scope(engine) as session:
        rows, _ = audit.list_entries(
            session, tenant_scope="acme", subject="alias:acme/support/production"
        )
        [entry] = rows
        assert (entry.action, entry.actor, entry.reason) == (
            "alias.promoted_gate_overridden",
            "ops",
            "hotfix for INC-42",
        )
        assert "FAILED" in entry.details["gate_reasons"]
        rows, _ = audit.list_entries(
            session, tenant_scope="acme", action="model_version.gate_overridden"
        )
        assert [r.subject for r in rows] == [f"model_version:{vid}"]


def test_rollback_walks_back_one_promotion_at_a_time(engine):
    v1, v2, v3 = (seed_version(engine, passed=True) for _ in range(3))
    for vid in (v1, v2, v3):
        promote(engine, vid, use_case="support")
    emitted = Recorder()

    def rollback(reason="bad answers"):
        with session_scope(engine) as session:
            return aliases.rollback(
                session,
                tenant="acme",
                use_case="support",
                stage="production",
                actor="oncall",
                reason=reason,
                emit=emitted,
            )

    with pytest.raises(InvalidArgument) as err:
        rollback(reason="")
    assert err.value.field == "reason"
    first = rollback()
    assert first.alias.row.model_version_id == v2 and first.alias.rollback_to == [v1]
    [request] = emitted.of(topics.DEPLOYMENT_REQUESTED)
    assert request.rollback and (request.model_version_id, request.previous_model_version_id) == (
        v2,
        v3,
    )
    assert rollback().alias.row.model_version_id == v1
    with pytest.raises(FailedPrecondition) as err:
        rollback()
    assert "no earlier version to roll back to" in str(err.value)
    # A new promotion goes on top of what is left.
    v4 = seed_version(engine, passed=True)
    assert promote(engine, v4, use_case="support").alias.rollback_to == [v1]
    assert rollback().alias.row.model_version_id == v1
    with session_scope(engine) as session:
        rows, _ = audit.list_entries(session, tenant_scope="acme", action="alias.rolled_back")
        assert [(r.actor, r.reason, r.details["model_version_id"]) for r in rows] == [
            ("oncall", "bad answers", v1),
            ("oncall", "bad answers", v1),
            ("oncall", "bad answers", v2),
        ]
    with pytest.raises(NotFound):
        with session_scope(engine) as session:
            aliases.rollback(
                session,
                tenant="acme",
                use_case="nope",
                stage="production",
                actor="oncall",
                reason="x",
                emit=emitted,
            )


def test_a_stale_read_loses_the_compare_and_set(engine):
    v1, v2, v3 = (seed_version(engine, passed=True) for _ in range(3))
    promote(engine, v1, use_case="support", stage="staging")
    with Session(engine) as slow:
        stale = slow.scalar(sa.select(AliasRow))  # read revision 1 ...
        promote(engine, v2, use_case="support", stage="staging")  # ... someone else moves it
        with pytest.raises(AliasChanged) as err:
            aliases.compare_and_set(slow, stale, v3, "slow-operator")
        slow.rollback()
    assert "alias acme/support/staging was changed by someone else (revision 2" in str(err.value)
    with pytest.raises(AliasChanged):
        promote(engine, v3, use_case="support", stage="staging", expected_revision=1)
    assert promote(engine, v3, use_case="support", stage="staging", expected_revision=2).changed


def test_a_version_is_archived_only_when_no_alias_or_deployment_points_at_it(engine):
    v1, v2 = seed_version(engine, passed=True), seed_version(engine, passed=True)
    first = promote(engine, v1, use_case="support")

    def archive(vid):
        with session_scope(engine) as session:
            return versions.archive(session, vid, actor="ops", reason="old", tenant_scope="acme")

    with pytest.raises(FailedPrecondition) as err:
        archive(v1)
    assert "alias acme/support/production points at it" in str(err.value)
    second = promote(engine, v2, use_case="support")
    with pytest.raises(FailedPrecondition) as err:
        archive(v1)  # the alias moved, but v1 is what the serving layer still runs
    assert f"deployment {first.deployment.id} (requested)" in str(err.value)
    with session_scope(engine) as session:
        for dep in (first.deployment, second.deployment):
            ok = events_pb2.DeploymentCompleted(deployment_id=dep.id, ok=True, triton_model="m")
            assert deployments.record_result(session, ok, actor="gateway").status == "live"
    with session_scope(engine) as session:
        assert deployments.serving(session, v1) == []  # superseded by v2's
        assert (
            deployments.record_result(
                session, events_pb2.DeploymentCompleted(deployment_id="dep-nope"), actor="gw"
            )
            is None
        )
    assert archive(v1).archived_at is not None
    assert archive(v1).archived_at is not None  # again: a no-op
    with pytest.raises(FailedPrecondition) as err:
        promote(engine, v1, use_case="support", stage="staging")
    assert "archived" in str(err.value)


def test_bad_alias_arguments_are_named(engine):
    vid = seed_version(engine, passed=True)
    cases = [
        (dict(use_case=""), "use_case"),
        (dict(use_case="Has Spaces"), "use_case"),
        (dict(use_case="ok", stage="prod"), "stage"),
        (dict(use_case="ok", expected_revision=-1), "expected_revision"),
    ]
    for kwargs, field in cases:
        with pytest.raises(InvalidArgument) as err:
            promote(engine, vid, **kwargs)
        assert err.value.field == field, kwargs
    with pytest.raises(NotFound) as err:
        promote(engine, "ghost:v1", use_case="ok")
    assert "model version 'ghost:v1' not found" in str(err.value)
    with pytest.raises(FailedPrecondition) as err:
        promote(engine, vid, use_case="ok", tenant="globex")
    assert "belongs to tenant 'acme'" in str(err.value)
