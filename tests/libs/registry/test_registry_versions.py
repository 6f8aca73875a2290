"""Model versions from training.completed: registration, idempotency, numbering, refusals,
evaluation verdicts. The core on SQLite and PostgreSQL, no broker."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from registry_factories import BASE, Recorder, add_base, completed, seed_version, sha, verdict

from posttrain.db import session_scope
from posttrain.events import topics
from posttrain.registry import gate, versions
from posttrain.registry.errors import UnknownBaseModel, WrongBaseModel
from posttrain.registry.tables import AuditRow, ModelVersionRow
from posttrain.rpc.errors import FailedPrecondition, InvalidArgument, NotFound
from posttrain.v1 import common_pb2


def register(engine, event, emit=None):
    with session_scope(engine) as session:
        row, created = versions.register_from_training(
            session, event, produced_by="trainer (job x)", emit=emit or Recorder()
        )
        return row.id, created


def count(engine, table) -> int:
    with session_scope(engine) as session:
        return session.scalar(sa.select(sa.func.count()).select_from(table))


def test_a_training_job_registers_one_version_however_often_it_is_reported(engine):
    with session_scope(engine) as session:
        base_sha = add_base(session)
    event = completed(name="support-bot")
    emitted = Recorder()
    assert register(engine, event, emitted) == ("support-bot:v1", True)
    assert register(engine, event, emitted) == ("support-bot:v1", False)  # new event id, same job
    assert count(engine, ModelVersionRow) == 1
    [announced] = emitted.of(topics.MODEL_REGISTERED)
    assert announced.model_version_id == "support-bot:v1"
    assert announced.version == 1 and announced.tenant == "acme"
    assert announced.lineage.training_job_id == event.job_id
    assert announced.lineage.base_model == f"{BASE}@{base_sha}"
    assert announced.artifacts[0].sha256 == event.artifacts[0].sha256

    with session_scope(engine) as session:
        row = versions.get(session, "support-bot:v1", tenant_scope="acme")
        assert (row.kind, row.method, row.base_model) == ("adapter", "lora", BASE)
        assert row.base_model_sha256 == base_sha
        assert row.chat_template_revision == "chatml-v1"
        assert row.config_yaml == event.config_yaml
        assert row.produced_by == "trainer (job x)"
        [entry] = session.scalars(sa.select(AuditRow)).all()[-1:]
        assert (entry.action, entry.subject) == (
            "model_version.registered",
            "model_version:support-bot:v1",
        )


def test_version_numbers_count_up_per_name_and_are_never_reused(engine):
    first = seed_version(engine, name="faq")
    second = seed_version(engine, name="faq")
    assert (first, second) == ("faq:v1", "faq:v2")
    with session_scope(engine) as session:
        versions.archive(session, second, actor="ops", reason="bad run", tenant_scope=None)
    assert seed_version(engine, name="faq") == "faq:v3"
    assert seed_version(engine, name="other", kind=common_pb2.MODEL_KIND_MERGED) == "other:v1"
    with session_scope(engine) as session:
        rows, total = versions.list_versions(session, tenant_scope="acme", name="faq")
        assert [r.id for r in rows] == ["faq:v3", "faq:v1"] and total == 2
        rows, total = versions.list_versions(
            session, tenant_scope="acme", name="faq", include_archived=True
        )
        assert total == 3


def test_an_adapter_on_an_unregistered_base_is_refused_and_nothing_is_written(engine):
    event = completed(base="llama-unknown")
    with pytest.raises(UnknownBaseModel) as err:
        register(engine, event)
    assert "'llama-unknown', which is not registered" in str(err.value)
    assert event.job_id in str(err.value)
    assert count(engine, ModelVersionRow) == 0


def test_an_adapter_trained_on_other_weights_than_the_registered_base_is_refused(engine):
    with session_scope(engine) as session:
        registered = add_base(session)
    event = completed(base=f"{BASE}@{sha('other weights')}")
    with pytest.raises(WrongBaseModel) as err:
        register(engine, event)
    assert sha("other weights") in str(err.value) and registered in str(err.value)
    event = completed()
    event.lineage.base_model = f"{BASE}@{sha('other weights')}"
    with pytest.raises(WrongBaseModel):
        register(engine, event)
    assert count(engine, ModelVersionRow) == 0


def test_a_malformed_event_is_refused_naming_every_field(engine):
    event = completed()
    event.ClearField("job_id")
    event.ClearField("kind")
    event.ClearField("artifacts")
    event.output_name = "no spaces allowed"
    with pytest.raises(InvalidArgument) as err:
        register(engine, event)
    fields = {v.field for v in err.value.violations}
    assert fields == {"job_id", "kind", "artifacts", "output_name"}


def test_a_model_name_belongs_to_the_tenant_that_registered_it_first(engine):
    seed_version(engine, name="shared-name", tenant="acme")
    with pytest.raises(FailedPrecondition) as err:
        seed_version(engine, name="shared-name", tenant="globex")
    assert "belongs to tenant 'acme'" in str(err.value)


def test_versions_of_another_tenant_are_not_found(engine):
    vid = seed_version(engine, tenant="acme")
    with session_scope(engine) as session:
        assert versions.get(session, vid, tenant_scope=None).id == vid  # admin
        with pytest.raises(NotFound) as err:
            versions.get(session, vid, tenant_scope="globex")
        assert vid in str(err.value)
        with pytest.raises(InvalidArgument) as bad:
            versions.get(session, "not-a-version-id", tenant_scope=None)
        assert bad.value.field == "id"


def test_verdicts_are_recorded_once_and_the_latest_of_each_suite_decides(engine):
    vid = seed_version(engine)
    with session_scope(engine) as session:
        assert gate.status(session, vid).verdict == ""
        failing = verdict(vid, False, suite="safety", reasons=("toxicity 0.09 > 0.05",))
        assert gate.record_evaluation(session, failing, actor="evaluator")[1]
        assert not gate.record_evaluation(session, failing, actor="evaluator")[1]  # same report
        gate.record_evaluation(session, verdict(vid, True, suite="quality"), actor="evaluator")
    with session_scope(engine) as session:
        status = gate.status(session, vid)
        assert status.verdict == "fail"
        assert status.reasons == [
            f"the release gate FAILED in suite 'safety' (report {failing.report_id}): "
            f"toxicity 0.09 > 0.05"
        ]
        gate.record_evaluation(session, verdict(vid, True, suite="safety"), actor="evaluator")
    with session_scope(engine) as session:
        assert gate.status(session, vid).passed
        with pytest.raises(NotFound) as err:
            gate.record_evaluation(session, verdict("ghost:v9", True), actor="evaluator")
        assert "ghost:v9" in str(err.value)
