"""RunEvaluation("base:<name>"): the registered base model itself, evaluated for the
caller's tenant, read side by side with the tuned versions; and the migration that made
reports unique per tenant."""

from __future__ import annotations

import grpc
import sqlalchemy as sa
from evaluator_helpers import BASE_MODEL, outbox, rpc_error
from test_evaluator_rpc import PASS, run, stored_result

from posttrain.db import apply_migrations
from posttrain.evaluator import EVALUATOR_MIGRATIONS
from posttrain.events import topics
from posttrain.v1 import evaluation_pb2

BASE = f"base:{BASE_MODEL}"


def test_a_base_model_is_evaluated_as_itself_for_the_callers_tenant(evaluator, artifacts):
    evaluator.registry.set_production("support", "bot:v1")
    report = run(evaluator, "olivia", BASE, suite="smoke-pass", use_case="support")
    assert (report.model_version_id, report.tenant, report.verdict) == (BASE, "acme", PASS)
    # Not a release candidate: compared with nothing, and nothing for the registry to gate.
    assert not report.production_model_version_id and not report.production_report_id
    assert any(
        n.startswith(f"regression not checked: {BASE} is a base model") for n in report.notes
    )
    assert outbox(evaluator.engine, topics.EVALUATION_COMPLETED) == []
    result = stored_result(evaluator, report)
    assert result.provenance.tenant == "acme" and result.provenance.adapter == ""
    assert report.artifact.uri.endswith(f"evaluations/acme/{BASE}/{report.id}/manifest.json")

    # The base's weights are base:v1's (registered as a full model): the same outputs.
    same = stored_result(evaluator, run(evaluator, "olivia", "base:v1", suite="smoke-pass"))
    assert [(c.case_id, c.output) for c in result.cases] == [
        (c.case_id, c.output) for c in same.cases
    ]
    # ("base:v1" is a version id: version 1 of a model named "base", not a base model.)
    assert same.provenance.model_version_id == "base:v1"
    # The tuned one (a LoRA on it) side by side: the same metrics, read against each other.
    tuned = run(evaluator, "olivia", "bot:v1", suite="smoke-pass")
    assert tuned.model_version_id == "bot:v1" and {(m.name, m.tag) for m in tuned.metrics} == {
        (m.name, m.tag) for m in report.metrics
    }

    listed = evaluator.stub("vic").ListReports(
        evaluation_pb2.ListReportsRequest(model_version_id=BASE)
    )
    assert [r.id for r in listed.reports] == [report.id]
    # Asking again: the same report.
    assert run(evaluator, "trent", BASE, suite="smoke-pass").id == report.id

    # Another tenant evaluates the same base: a report of its own, invisible to acme.
    theirs = run(evaluator, "mallory", BASE, suite="smoke-pass")
    assert theirs.tenant == "globex" and theirs.id != report.id
    assert stored_result(evaluator, theirs).provenance.tenant == "globex"
    listed = evaluator.stub("vic").ListReports(
        evaluation_pb2.ListReportsRequest(model_version_id=BASE)
    )
    assert [r.id for r in listed.reports] == [report.id]
    everyone = evaluator.stub("root").ListReports(
        evaluation_pb2.ListReportsRequest(model_version_id=BASE)
    )
    assert {r.tenant for r in everyone.reports} == {"acme", "globex"}


def test_an_unknown_or_unnamed_base_model_is_refused(evaluator):
    missing = rpc_error(lambda: run(evaluator, "olivia", "base:no-such-model"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    unnamed = rpc_error(lambda: run(evaluator, "olivia", "base:"))
    assert unnamed.code() == grpc.StatusCode.INVALID_ARGUMENT
    viewer = rpc_error(lambda: run(evaluator, "vic", BASE))
    assert viewer.code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_per_tenant_migration_keeps_the_reports(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.sqlite3'}")
    apply_migrations(engine, "evaluator", EVALUATOR_MIGRATIONS[:1])
    row = dict(
        id="eval-1",
        tenant="acme",
        model_version_id="bot:v1",
        suite="s",
        suite_version="v",
        suite_base_version="v",
        seed=0,
        verdict="PASS",
        reasons=[],
        metrics={},
        judge_id="",
        judge_version="",
        judge_trusted=False,
        anchor_set_version="",
        gate_policy="",
        code_version="",
        production_model_version_id="",
        production_report_id="",
        loaded=True,
        artifact={},
        json_report={},
        html_report={},
        trigger="t",
        requested_by="",
        report=b"",
        created_at=sa.func.now(),
    )
    table = sa.Table("evaluator_reports", sa.MetaData(), autoload_with=engine)
    with engine.begin() as conn:
        conn.execute(table.insert().values(**row))
    assert apply_migrations(engine, "evaluator", EVALUATOR_MIGRATIONS) == [
        "0002_reports_unique_per_tenant"
    ]
    table = sa.Table("evaluator_reports", sa.MetaData(), autoload_with=engine)
    with engine.begin() as conn:
        assert conn.execute(sa.select(table.c.id)).scalars().all() == ["eval-1"]
        # The same version, suite version and seed for another tenant: allowed now.
        conn.execute(table.insert().values(**{**row, "id": "eval-2", "tenant": "globex"}))
    try:
        with engine.begin() as conn:
            conn.execute(table.insert().values(**{**row, "id": "eval-3"}))
    except sa.exc.IntegrityError:
        pass
    else:
        raise AssertionError("a second report of the same tenant was accepted")
    engine.dispose()
