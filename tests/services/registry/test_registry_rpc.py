"""RegistryService over real gRPC with API keys, on SQLite and PostgreSQL: roles, tenants,
errors with what and where, the gate, overrides, rollback, the race, archiving, lineage,
base models from the real S3 server."""

from __future__ import annotations

import threading

import grpc
import pytest
from registry_factories import BASE, seed_version, sha, uid, write_hf_folder

from posttrain.events import topics
from posttrain.rpc import field_violations
from posttrain.v1 import common_pb2, registry_pb2

PROD = registry_pb2.STAGE_PRODUCTION


def promote_request(
    version_id: str, use_case: str = "support", **kw
) -> registry_pb2.PromoteRequest:
    return registry_pb2.PromoteRequest(
        model_version_id=version_id, use_case=use_case, stage=kw.pop("stage", PROD), **kw
    )


def fails(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=30)
    return err.value


def test_callers_need_a_key_and_the_role_for_what_they_do(registry):
    vid = seed_version(registry.engine, passed=True)
    anonymous, viewer = registry.stub(), registry.stub("viewer")
    get = registry_pb2.GetModelVersionRequest(id=vid)
    assert fails(anonymous.GetModelVersion, get).code() == grpc.StatusCode.UNAUTHENTICATED
    assert viewer.GetModelVersion(get).id == vid
    assert (
        registry.stub("operator").GetModelVersion(get).gate_verdict == common_pb2.GATE_VERDICT_PASS
    )

    denied = fails(viewer.Promote, promote_request(vid))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'operator'" in denied.details()
    trainer = registry.stub("trainer")
    for call, request in (
        (trainer.Promote, promote_request(vid)),
        (
            trainer.Rollback,
            registry_pb2.RollbackRequest(use_case="support", stage=PROD, reason="x"),
        ),
        (trainer.ArchiveModelVersion, registry_pb2.ArchiveModelVersionRequest(id=vid)),
        (
            viewer.RegisterBaseModel,
            registry_pb2.RegisterBaseModelRequest(name="x", source_uri="s3://b/k"),
        ),
    ):
        assert fails(call, request).code() == grpc.StatusCode.PERMISSION_DENIED


def test_bad_arguments_name_the_field_or_the_missing_thing(registry):
    operator = registry.stub("operator")
    missing = fails(operator.Promote, promote_request("ghost:v3"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert "model version 'ghost:v3' not found" in missing.details()

    vid = seed_version(registry.engine, passed=True)
    empty = fails(operator.Promote, promote_request(vid, use_case=""))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(empty)] == ["use_case"]
    no_stage = fails(operator.Promote, promote_request(vid, stage=registry_pb2.STAGE_UNSPECIFIED))
    assert [v.field for v in field_violations(no_stage)] == ["stage"]
    bad_id = fails(operator.GetModelVersion, registry_pb2.GetModelVersionRequest(id="support bot"))
    assert [v.field for v in field_violations(bad_id)] == ["id"]
    no_alias = fails(
        operator.GetAlias, registry_pb2.GetAliasRequest(use_case="nothing-here", stage=PROD)
    )
    assert no_alias.code() == grpc.StatusCode.NOT_FOUND
    assert "alias 'acme/nothing-here/production' not found" in no_alias.details()
    bad_page = fails(
        operator.ListAudit,
        registry_pb2.ListAuditRequest(page=common_pb2.PageRequest(page_token="x")),
    )
    assert [v.field for v in field_violations(bad_page)] == ["page.page_token"]


def test_the_gate_decides_production_and_a_promotion_requests_a_deployment(registry):
    operator = registry.stub("operator", name="olga")
    unevaluated = seed_version(registry.engine)
    refused = fails(operator.Promote, promote_request(unevaluated))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"no release-gate verdict from the evaluator for {unevaluated}" in refused.details()

    failing = seed_version(registry.engine, passed=False)
    refused = fails(operator.Promote, promote_request(failing))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "the release gate FAILED in suite 'release'" in refused.details()
    assert registry.outbox(topics.DEPLOYMENT_REQUESTED) == []

    passing = seed_version(registry.engine, passed=True)
    alias = operator.Promote(promote_request(passing, reason="release 12"))
    assert (alias.model_version_id, alias.revision, alias.updated_by) == (passing, 1, "olga")
    assert alias.tenant == "acme" and alias.stage == PROD
    [request] = registry.outbox(topics.DEPLOYMENT_REQUESTED)
    assert (request.model_version_id, request.alias, request.rollback) == (
        passing,
        "support/production",
        False,
    )
    assert (
        registry.stub("viewer").GetAlias(
            registry_pb2.GetAliasRequest(use_case="support", stage=PROD)
        )
        == alias
    )


def test_an_override_needs_an_operator_and_a_reason_and_is_audited(registry):
    failing = seed_version(registry.engine, passed=False)
    operator = registry.stub("operator", name="olga")
    no_reason = fails(operator.Promote, promote_request(failing, override_gate=True))
    assert no_reason.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(no_reason)] == ["reason"]
    assert (
        fails(
            registry.stub("viewer", "trainer").Promote,
            promote_request(failing, override_gate=True, reason="please"),
        ).code()
        == grpc.StatusCode.PERMISSION_DENIED
    )

    alias = operator.Promote(promote_request(failing, override_gate=True, reason="INC-7 hotfix"))
    assert alias.model_version_id == failing
    entries = (
        registry.stub("viewer")
        .ListAudit(registry_pb2.ListAuditRequest(subject="alias:acme/support/production"))
        .entries
    )
    [entry] = entries
    assert (entry.actor, entry.action, entry.reason) == (
        "olga",
        "alias.promoted_gate_overridden",
        "INC-7 hotfix",
    )
    assert entry.details["model_version_id"] == failing and entry.at.seconds > 0


def test_rollback_returns_to_the_previous_version_and_tells_the_serving_layer(registry):
    operator = registry.stub("operator", name="olga")
    old, new = (
        seed_version(registry.engine, passed=True),
        seed_version(registry.engine, passed=True),
    )
    operator.Promote(promote_request(old))
    alias = operator.Promote(promote_request(new))
    assert alias.previous_model_version_id == old and list(alias.rollback_to) == [old]

    back = operator.Rollback(
        registry_pb2.RollbackRequest(use_case="support", stage=PROD, reason="latency regression")
    )
    assert (back.model_version_id, back.revision, back.previous_model_version_id) == (old, 3, "")
    last = registry.outbox(topics.DEPLOYMENT_REQUESTED)[-1]
    assert last.rollback and (last.model_version_id, last.previous_model_version_id) == (old, new)
    assert (last.requested_by, last.reason) == ("olga", "latency regression")
    [entry] = (
        registry.stub("viewer")
        .ListAudit(registry_pb2.ListAuditRequest(action="alias.rolled_back"))
        .entries
    )
    assert (entry.actor, entry.reason, entry.subject) == (
        "olga",
        "latency regression",
        "alias:acme/support/production",
    )
    nothing_left = fails(
        operator.Rollback,
        registry_pb2.RollbackRequest(use_case="support", stage=PROD, reason="again"),
    )
    assert nothing_left.code() == grpc.StatusCode.FAILED_PRECONDITION


def race(stubs, requests) -> list:
    """Send one Promote per stub at the same moment; each result is an Alias or an RpcError."""
    barrier = threading.Barrier(len(stubs))
    results: list = [None] * len(stubs)

    def call(i: int) -> None:
        barrier.wait()
        try:
            results[i] = stubs[i].Promote(requests[i], timeout=30)
        except grpc.RpcError as err:
            results[i] = err

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(stubs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_promotions_racing_on_one_alias_one_wins_the_other_is_aborted(registry):
    staging = registry_pb2.STAGE_STAGING
    first = seed_version(registry.engine, passed=True)
    registry.stub("operator").Promote(promote_request(first, stage=staging))
    stubs = [registry.stub("operator", name=f"op{i}") for i in range(2)]
    for revision in (1, 2, 3):
        requests = [
            promote_request(
                seed_version(registry.engine), stage=staging, expected_revision=revision
            )
            for _ in stubs
        ]
        results = race(stubs, requests)
        won = [r for r in results if isinstance(r, registry_pb2.Alias)]
        lost = [r for r in results if isinstance(r, grpc.RpcError)]
        assert len(won) == 1 and len(lost) == 1, results
        assert won[0].revision == revision + 1
        assert lost[0].code() == grpc.StatusCode.ABORTED
        assert "alias acme/support/staging was changed by someone else" in lost[0].details()


def test_a_version_is_archived_instead_of_deleted_and_never_while_aliased(registry):
    operator = registry.stub("operator")
    vid = seed_version(registry.engine, passed=True)
    operator.Promote(promote_request(vid, stage=registry_pb2.STAGE_CANDIDATE))
    refused = fails(operator.ArchiveModelVersion, registry_pb2.ArchiveModelVersionRequest(id=vid))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "alias acme/support/candidate points at it" in refused.details()
    operator.Promote(
        promote_request(seed_version(registry.engine), stage=registry_pb2.STAGE_CANDIDATE)
    )
    archived = operator.ArchiveModelVersion(
        registry_pb2.ArchiveModelVersionRequest(id=vid, reason="superseded")
    )
    assert archived.archived and archived.archive_reason == "superseded"
    viewer = registry.stub("viewer")
    assert viewer.GetModelVersion(registry_pb2.GetModelVersionRequest(id=vid)).archived
    listed = viewer.ListModelVersions(registry_pb2.ListModelVersionsRequest())
    assert vid not in [v.id for v in listed.versions]
    listed = viewer.ListModelVersions(registry_pb2.ListModelVersionsRequest(include_archived=True))
    assert vid in [v.id for v in listed.versions]


def test_a_tenant_sees_and_changes_only_its_own_models(registry):
    ours = seed_version(registry.engine, passed=True, tenant="acme", dataset_version=sha("d"))
    theirs = seed_version(registry.engine, passed=True, tenant="globex", dataset_version=sha("d"))
    registry.stub("operator").Promote(promote_request(ours))
    globex = registry.stub("operator", "viewer", tenant="globex")

    hidden = fails(globex.GetModelVersion, registry_pb2.GetModelVersionRequest(id=ours))
    assert hidden.code() == grpc.StatusCode.NOT_FOUND
    assert (
        fails(globex.Promote, promote_request(ours, tenant="globex")).code()
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        fails(globex.Promote, promote_request(theirs, tenant="acme")).code()
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        fails(
            globex.GetAlias,
            registry_pb2.GetAliasRequest(use_case="support", stage=PROD, tenant="acme"),
        ).code()
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        fails(
            globex.GetLineage, registry_pb2.GetLineageRequest(node_id=f"model_version:{ours}")
        ).code()
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        fails(globex.ListModelVersions, registry_pb2.ListModelVersionsRequest(tenant="acme")).code()
        == grpc.StatusCode.PERMISSION_DENIED
    )

    assert [
        v.id for v in globex.ListModelVersions(registry_pb2.ListModelVersionsRequest()).versions
    ] == [theirs]
    graph = globex.GetLineage(
        registry_pb2.GetLineageRequest(
            node_id=f"dataset_version:{sha('d')}",
            direction=registry_pb2.GetLineageRequest.DOWNSTREAM,
        )
    )
    assert {n.id for n in graph.nodes if n.kind == "model_version"} == {f"model_version:{theirs}"}
    audit = globex.ListAudit(registry_pb2.ListAuditRequest()).entries
    assert {e.subject for e in audit if e.subject.startswith("model_version:")} == {
        f"model_version:{theirs}"
    }
    # An admin sees every tenant.
    admin = registry.stub("admin", tenant="root")
    assert admin.GetModelVersion(registry_pb2.GetModelVersionRequest(id=ours)).tenant == "acme"
    everything = admin.ListAliases(registry_pb2.ListAliasesRequest(tenant="*"))
    assert [a.model_version_id for a in everything.aliases] == [ours]
    assert (
        fails(globex.ListAliases, registry_pb2.ListAliasesRequest(tenant="*")).code()
        == grpc.StatusCode.PERMISSION_DENIED
    )


def test_lineage_both_ways_over_grpc(registry):
    data = sha(f"dataset-{uid()}")
    vid = seed_version(registry.engine, passed=True, dataset_version=data, job_id=f"job-{uid()}")
    registry.stub("operator").Promote(promote_request(vid, use_case="faq"))
    viewer = registry.stub("viewer")
    down = viewer.GetLineage(
        registry_pb2.GetLineageRequest(
            node_id=f"dataset_version:{data}", direction=registry_pb2.GetLineageRequest.DOWNSTREAM
        )
    )
    assert {n.kind for n in down.nodes} == {
        "dataset_version",
        "training_job",
        "model_version",
        "evaluation",
        "deployment",
        "alias",
    }
    up = viewer.GetLineage(
        registry_pb2.GetLineageRequest(
            node_id="alias:acme/faq/production", direction=registry_pb2.GetLineageRequest.UPSTREAM
        )
    )
    assert {n.id for n in up.nodes if n.kind in ("dataset_version", "base_model")} == {
        f"dataset_version:{data}",
        f"base_model:{BASE}",
    }
    bad = fails(viewer.GetLineage, registry_pb2.GetLineageRequest(node_id="nonsense"))
    assert [v.field for v in field_violations(bad)] == ["node_id"]


def test_a_base_model_is_registered_from_a_folder_in_the_artifact_store(registry, tmp_path):
    ref = registry.store.put_folder(write_hf_folder(tmp_path / "m"), f"base-models/m-{uid()}")
    trainer = registry.stub("trainer", name="tina")
    request = registry_pb2.RegisterBaseModelRequest(
        name="org/tiny-llama", source_uri=ref.uri, chat_template_revision="chatml-v2"
    )
    model = trainer.RegisterBaseModel(request)
    assert (model.name, model.architecture, model.parameters) == (
        "org/tiny-llama",
        "LlamaForCausalLM",
        64,
    )
    assert model.weights.sha256 == ref.sha256 and model.registered_by == "tina"
    assert trainer.RegisterBaseModel(request) == model  # idempotent
    assert [
        m.name
        for m in registry.stub("viewer").ListBaseModels(registry_pb2.ListBaseModelsRequest()).models
    ] == ["org/tiny-llama"]
    missing = fails(
        trainer.RegisterBaseModel,
        registry_pb2.RegisterBaseModelRequest(
            name="other", source_uri=f"s3://{registry.store.bucket}/base-models/nope/manifest.json"
        ),
    )
    assert missing.code() == grpc.StatusCode.FAILED_PRECONDITION
    bad_name = fails(
        trainer.RegisterBaseModel,
        registry_pb2.RegisterBaseModelRequest(name="", source_uri=ref.uri),
    )
    assert [v.field for v in field_violations(bad_name)] == ["name"]
    unknown = fails(
        registry.stub("viewer").GetBaseModel, registry_pb2.GetBaseModelRequest(name="nope")
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND and "'nope'" in unknown.details()
