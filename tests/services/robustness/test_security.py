"""Who may call what, as data: ROLE_MATRIX names the roles each RPC admits (admin always
does), and every (method, caller) row is called with an empty request through the real
interceptors. An admitted role must get past the role check (any status but
PERMISSION_DENIED / UNAUTHENTICATED); any other role gets PERMISSION_DENIED; no key, a
revoked key and a malformed one get UNAUTHENTICATED. Changing a servicer's require_role
without changing the matrix (or adding an RPC without a row) fails here.

Also: API keys are hashed at rest, tenants do not see each other's datasets or registry
rows, and neither API keys nor S3 credentials reach the logs.
"""

from __future__ import annotations

import json
import logging

import grpc
import pytest
import sqlalchemy as sa
from robustness_helpers import ROLE_NAMES, Fleet, all_methods, method_id

from posttrain.rpc import make_channel
from posttrain.v1 import intake_pb2, intake_pb2_grpc, registry_pb2, registry_pb2_grpc

EVERYONE = frozenset(ROLE_NAMES) - {"client"}  # READ_ROLES = every role (client: the gateway's)
INTAKE_READ = frozenset({"viewer", "uploader", "approver", "trainer", "operator", "rater"})
REGISTRY_READ = frozenset({"viewer", "trainer", "operator"})
GATEWAY_READ = frozenset({"viewer", "operator"})

# "<Service>.<Method>" -> roles admitted besides admin.
ROLE_MATRIX: dict[str, frozenset[str]] = {
    "IntakeService.UploadDataset": frozenset({"uploader"}),
    "IntakeService.ApproveDataset": frozenset({"approver"}),
    "IntakeService.RejectDataset": frozenset({"approver"}),
    "IntakeService.GetDataset": INTAKE_READ,
    "IntakeService.ListDatasets": INTAKE_READ,
    "IntakeService.ListVersions": INTAKE_READ,
    "IntakeService.GetVersion": INTAKE_READ,
    "IntakeService.GetValidationReport": INTAKE_READ,
    "IntakeService.DiffVersions": INTAKE_READ,
    "RegistryService.RegisterBaseModel": frozenset({"trainer"}),
    "RegistryService.GetBaseModel": REGISTRY_READ,
    "RegistryService.ListBaseModels": REGISTRY_READ,
    "RegistryService.GetModelVersion": REGISTRY_READ,
    "RegistryService.ListModelVersions": REGISTRY_READ,
    "RegistryService.ArchiveModelVersion": frozenset({"operator"}),
    "RegistryService.GetLineage": REGISTRY_READ,
    "RegistryService.Promote": frozenset({"operator"}),
    "RegistryService.Rollback": frozenset({"operator"}),
    "RegistryService.GetAlias": REGISTRY_READ,
    "RegistryService.ListAliases": REGISTRY_READ,
    "RegistryService.ListAudit": REGISTRY_READ,
    "RegistryService.WhoAmI": frozenset(ROLE_NAMES),
    "TrainingService.SubmitJob": frozenset({"trainer"}),
    "TrainingService.GetJob": frozenset(ROLE_NAMES),
    "TrainingService.ListJobs": frozenset(ROLE_NAMES),
    "TrainingService.CancelJob": frozenset({"trainer"}),
    "TrainingService.WatchJob": frozenset(ROLE_NAMES),
    "ComparisonService.CreateComparison": frozenset({"trainer"}),
    "ComparisonService.GetComparison": frozenset(ROLE_NAMES),
    "ComparisonService.ListComparisons": frozenset(ROLE_NAMES),
    "ComparisonService.GetComparisonReport": frozenset(ROLE_NAMES),
    "EvaluationService.RunEvaluation": frozenset({"operator", "trainer"}),
    "EvaluationService.GetReport": frozenset(ROLE_NAMES),
    "EvaluationService.ListReports": frozenset(ROLE_NAMES),
    "EvaluationService.ListReviewItems": frozenset(ROLE_NAMES),
    "EvaluationService.SubmitReviewLabel": frozenset({"rater"}),
    "EvaluationService.UploadSuite": frozenset({"operator"}),
    "EvaluationService.ListSuites": frozenset(ROLE_NAMES),
    "EvaluationService.GetJudgeCalibration": frozenset(ROLE_NAMES),
    "EvaluationService.ExportAnchors": frozenset(ROLE_NAMES),
    "InferenceGateway.Generate": frozenset({"client"}),
    "InferenceGateway.GenerateStream": frozenset({"client"}),
    "InferenceGateway.RecordFeedback": frozenset({"client", "rater"}),
    "InferenceGateway.CreateExperiment": frozenset({"operator"}),
    "InferenceGateway.StopExperiment": frozenset({"operator"}),
    "InferenceGateway.GetExperimentReport": GATEWAY_READ,
    "InferenceGateway.ListDeployments": GATEWAY_READ | {"client"},
    "InferenceGateway.ListExperiments": GATEWAY_READ,
}

METHODS = all_methods()
CALLERS = [*ROLE_NAMES, "no key", "revoked", "malformed"]
REFUSED = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}


def test_the_matrix_has_a_row_for_every_rpc_and_no_other():
    assert set(ROLE_MATRIX) == {method_id(m) for m in METHODS}


def _empty_call(fleet: Fleet, channel, service: str, method, caller: str) -> grpc.StatusCode:
    from test_hostile_input import call  # one way to call any method with raw bytes

    key = {"no key": None, "malformed": "pt_nope_short"}.get(caller, fleet.keys.get(caller))
    code, _ = call(channel, service, method, b"", key)
    return code


@pytest.fixture(scope="module")
def channel(fleet: Fleet) -> grpc.Channel:
    return fleet.channel()


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("entry", METHODS, ids=[method_id(m) for m in METHODS])
def test_role_matrix_row(fleet, channel, entry, caller):
    service, method = entry
    code = _empty_call(fleet, channel, service, method, caller)
    if caller in ("no key", "revoked", "malformed"):
        assert code == grpc.StatusCode.UNAUTHENTICATED
    elif caller == "admin" or caller in ROLE_MATRIX[method_id(entry)]:
        assert code not in REFUSED, f"{caller} should pass the role check, got {code.name}"
    else:
        assert code == grpc.StatusCode.PERMISSION_DENIED, f"{caller} got {code.name}"


def test_api_keys_are_stored_hashed(fleet):
    with fleet.auth_engine.connect() as conn:
        stored = json.dumps(
            [list(r) for r in conn.execute(sa.text("SELECT * FROM api_keys"))], default=str
        )
    for key in fleet.keys.values():
        secret = key.split("_", 2)[2]
        assert secret not in stored and key not in stored


# ---------------------------------------------------------------- tenants


def _stub(fleet: Fleet, factory, key: str):
    channel = make_channel(fleet.server.address, api_key=key)
    fleet.channels.append(channel)
    return factory(channel)


def test_a_tenant_does_not_see_another_tenants_datasets_or_registry_rows(fleet, caplog):
    acme_key = fleet.key_store.create_key("acme-up", ["uploader", "viewer"], "acme")
    globex_key = fleet.key_store.create_key("globex-viewer", ["viewer", "operator"], "globex")
    acme = _stub(fleet, intake_pb2_grpc.IntakeServiceStub, acme_key)
    globex = _stub(fleet, intake_pb2_grpc.IntakeServiceStub, globex_key)
    rows = b"".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"q{i}"},
                    {"role": "assistant", "content": "a"},
                ]
            }
        ).encode()
        + b"\n"
        for i in range(3)
    )
    with caplog.at_level(logging.DEBUG):
        uploaded = acme.UploadDataset(
            iter(
                [
                    intake_pb2.UploadDatasetRequest(
                        metadata=intake_pb2.UploadMetadata(
                            dataset="secret-plans",
                            format=intake_pb2.DATA_FORMAT_JSONL,
                            schema=intake_pb2.ROW_SCHEMA_CHAT,
                        )
                    ),
                    intake_pb2.UploadDatasetRequest(chunk=rows),
                ]
            )
        )
        assert uploaded.version.dataset == "secret-plans"
        assert acme.GetDataset(intake_pb2.GetDatasetRequest(dataset="secret-plans")).name
        with pytest.raises(grpc.RpcError) as err:
            globex.GetDataset(intake_pb2.GetDatasetRequest(dataset="secret-plans"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        listed = globex.ListDatasets(intake_pb2.ListDatasetsRequest())
        assert "secret-plans" not in [d.name for d in listed.datasets]

        registry = _stub(fleet, registry_pb2_grpc.RegistryServiceStub, globex_key)
        for call in (
            lambda: registry.ListAliases(registry_pb2.ListAliasesRequest(tenant="acme")),
            lambda: registry.ListAliases(registry_pb2.ListAliasesRequest(tenant="*")),
            lambda: registry.GetAlias(
                registry_pb2.GetAliasRequest(
                    tenant="acme", use_case="x", stage=registry_pb2.STAGE_PRODUCTION
                )
            ),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # Nothing secret in what the flow logged: neither the keys nor the S3 credentials.
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    secrets = [acme_key, globex_key, *(k.split("_", 2)[2] for k in (acme_key, globex_key))]
    secrets.append(fleet.s3.secret_key)
    assert caplog.records, "the flow logged nothing: the check would prove nothing"
    for secret in secrets:
        assert secret not in text
