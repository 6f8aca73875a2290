"""The lineage graph both ways: "which models were trained on this dataset version?" and
"what data is behind production?", with tenants kept apart."""

from __future__ import annotations

import pytest
from registry_factories import BASE, promote, seed_version, sha, verdict

from posttrain.db import session_scope
from posttrain.registry import deployments, gate, lineage
from posttrain.rpc.errors import InvalidArgument, NotFound
from posttrain.v1 import events_pb2


def walk(engine, start, direction, scope="acme", depth=0):
    with session_scope(engine) as session:
        return lineage.get_lineage(
            session, start, direction=direction, max_depth=depth, tenant_scope=scope
        )


def test_lineage_from_a_dataset_down_to_models_and_from_production_back_to_data(engine):
    data, other_data = sha("support-chats v3"), sha("faq v1")
    a = seed_version(engine, passed=True, dataset_version=data, name="bot", job_id="job-a")
    b = seed_version(engine, dataset_version=data, name="bot", job_id="job-b")
    c = seed_version(engine, dataset_version=other_data, name="faq")
    theirs = seed_version(engine, dataset_version=data, name="globex-bot", tenant="globex")
    change = promote(engine, a, use_case="support")
    with session_scope(engine) as session:
        deployments.record_result(
            session,
            events_pb2.DeploymentCompleted(deployment_id=change.deployment.id, ok=True),
            actor="gateway",
        )

    down = walk(engine, f"dataset_version:{data}", "downstream")
    assert down.ids("model_version") == {f"model_version:{a}", f"model_version:{b}"}
    assert down.ids("training_job") == {"training_job:job-a", "training_job:job-b"}
    assert f"model_version:{c}" not in down.ids()
    assert f"model_version:{theirs}" not in down.ids()  # another tenant's
    assert down.ids("alias") == {"alias:acme/support/production"}
    [deployment] = [n for n in down.nodes if n.kind == "deployment"]
    assert deployment.attributes["status"] == "live"
    assert len(down.ids("evaluation")) == 1
    [dataset] = [n for n in down.nodes if n.kind == "dataset_version"]
    assert dataset.label == f"support-chats@{data[:12]}"

    up = walk(engine, "alias:acme/support/production", "upstream")
    assert up.ids() == {
        "alias:acme/support/production",
        f"model_version:{a}",
        "training_job:job-a",
        f"dataset_version:{data}",
        f"base_model:{BASE}",
    }
    edges = {(e.from_id, e.to_id, e.relation) for e in up.edges}
    assert (f"dataset_version:{data}", "training_job:job-a", "input") in edges
    assert ("training_job:job-a", f"model_version:{a}", "output") in edges
    assert (f"model_version:{a}", "alias:acme/support/production", "alias") in edges

    both = walk(engine, f"model_version:{a}", "both")
    assert f"dataset_version:{data}" in both.ids() and "alias:acme/support/production" in both.ids()
    assert f"model_version:{b}" not in both.ids()  # a sibling, neither ancestor nor descendant
    assert walk(engine, f"dataset_version:{data}", "downstream", depth=1).ids() == {
        f"dataset_version:{data}",
        "training_job:job-a",
        "training_job:job-b",
    }
    assert (
        f"model_version:{theirs}"
        in walk(engine, f"dataset_version:{data}", "downstream", None).ids()
    )


def test_lineage_start_nodes_are_checked(engine):
    theirs = seed_version(engine, tenant="globex")
    with pytest.raises(NotFound):
        walk(engine, f"model_version:{theirs}", "both")  # exists, but not for acme
    with pytest.raises(NotFound):
        walk(engine, "alias:acme/nothing/production", "upstream")
    with pytest.raises(InvalidArgument) as err:
        walk(engine, "model:foo", "both")
    assert err.value.field == "node_id"
    with pytest.raises(InvalidArgument):
        walk(engine, f"model_version:{theirs}", "both", scope=None, depth=-1)


def test_evaluations_hang_off_their_version(engine):
    vid = seed_version(engine)
    report = verdict(vid, False, reasons=("regression on refunds",))
    with session_scope(engine) as session:
        gate.record_evaluation(session, report, actor="evaluator")
    graph = walk(engine, f"model_version:{vid}", "downstream")
    [node] = [n for n in graph.nodes if n.kind == "evaluation"]
    assert node.id == f"evaluation:{report.report_id}"
    assert node.attributes["verdict"] == "fail"
