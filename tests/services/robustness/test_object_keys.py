"""Object keys that can't escape their prefix: every name a caller gives that becomes part
of an S3 key (dataset names, suite file paths, base model names and source URIs, training
output names, tenants) is refused with INVALID_ARGUMENT naming the field when it is
path-like (../, absolute, url-encoded or unicode dots, NUL, backslashes), through the real
RPCs of every service (the robustness `fleet`), and nothing is stored. An accepted upload
lands under datasets/<tenant>/<dataset>/ only.
"""

from __future__ import annotations

import json

import grpc
import pytest
from robustness_helpers import Fleet

from posttrain.rpc import ApiKeyStore, InvalidArgument
from posttrain.storage.keys import check_artifact_name, check_relative_name, check_segment
from posttrain.v1 import (
    common_pb2,
    evaluation_pb2,
    evaluation_pb2_grpc,
    intake_pb2,
    intake_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)

HOSTILE_NAMES = [
    "../escape",
    "../../etc/passwd",
    "a/../../b",
    "/absolute",
    "..",
    ".",
    "%2e%2e",
    "%2e%2e%2fescape",
    "..%2fescape",
    "\uff0e\uff0e",  # fullwidth full stops: '..' once NFKC-normalised
    "\u2024\u2024",  # one dot leader, twice
    "a\uff0fb",  # fullwidth solidus: '/'
    "nul\x00byte",
    "back\\slash",
    "a//b",
    "trailing/",
]
CASE = b'{"id": "c1", "prompt": "hi", "reference": "hi", "metrics": ["exact_match"]}\n'
ROWS = b'{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}\n'


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def metadata(fleet: Fleet, role: str = "admin") -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {fleet.keys[role]}")]


def upload(fleet: Fleet, dataset: str):
    stub = intake_pb2_grpc.IntakeServiceStub(fleet.channel())
    requests = [
        intake_pb2.UploadDatasetRequest(
            metadata=intake_pb2.UploadMetadata(
                dataset=dataset,
                format=intake_pb2.DATA_FORMAT_JSONL,
                schema=intake_pb2.ROW_SCHEMA_CHAT,
            )
        ),
        intake_pb2.UploadDatasetRequest(chunk=ROWS * 3),
    ]
    return stub.UploadDataset(iter(requests), metadata=metadata(fleet), timeout=30)


# ------------------------------------------------------------------ the key rules


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=ascii)
def test_the_key_rules_refuse_every_hostile_name_with_the_argument_and_reason(name):
    with pytest.raises(ValueError, match=r"^artifact_name=.* is not allowed: \w"):
        check_relative_name(name, "artifact_name")
    with pytest.raises(ValueError, match="^tenant="):
        check_segment(name, "tenant")


def test_names_that_merely_contain_dots_or_percent_signs_stay_allowed():
    for name in ("a..b", "v1.2.3", "datasets/acme/support-kb/3", "100%-real", "名前/ﬀ"):
        assert check_artifact_name(name) == name


# ------------------------------------------------------------------ through the RPCs


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=ascii)
def test_upload_dataset_refuses_a_path_like_dataset_name(fleet: Fleet, name: str) -> None:
    before = fleet.objects()
    err = rpc_error(lambda: upload(fleet, name))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dataset" in err.details()
    assert fleet.objects() == before


def test_an_accepted_upload_lands_under_its_tenant_and_dataset_only(fleet: Fleet) -> None:
    before = set(fleet.objects())
    uploaded = upload(fleet, "keys-in-prefix")
    added = set(fleet.objects()) - before
    named = [k for k in added if not k.startswith("blobs/sha256/")]
    assert named, "the upload published nothing by name"
    for key in named:
        assert key.startswith("datasets/acme/keys-in-prefix/"), key
    assert uploaded.version.dataset == "keys-in-prefix"


@pytest.mark.parametrize("path", HOSTILE_NAMES, ids=ascii)
def test_upload_suite_refuses_a_path_like_file_path(fleet: Fleet, path: str) -> None:
    stub = evaluation_pb2_grpc.EvaluationServiceStub(fleet.channel())
    # suite.yaml names the hostile path as its cases file (JSON is YAML).
    suite_yaml = f"name: key-escape\nlabel: v1\ncases: {json.dumps(path)}\n".encode()
    request = evaluation_pb2.UploadSuiteRequest(
        files=[
            evaluation_pb2.SuiteFile(path="suite.yaml", content=suite_yaml),
            evaluation_pb2.SuiteFile(path=path, content=CASE),
        ]
    )
    before = fleet.objects()
    err = rpc_error(lambda: stub.UploadSuite(request, metadata=metadata(fleet), timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("invalid argument 'files[1].path'")
    assert fleet.objects() == before


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=ascii)
def test_register_base_model_refuses_a_path_like_name_or_source(fleet: Fleet, name: str) -> None:
    stub = registry_pb2_grpc.RegistryServiceStub(fleet.channel())
    bucket = fleet.s3.bucket
    before = fleet.objects()
    for request, field in (
        (
            registry_pb2.RegisterBaseModelRequest(
                name=name, source_uri=f"s3://{bucket}/base-models/x/manifest.json"
            ),
            "name",
        ),
        (
            registry_pb2.RegisterBaseModelRequest(
                name="tiny-base", source_uri=f"s3://{bucket}/{name}/manifest.json"
            ),
            "source_uri",
        ),
    ):
        err = rpc_error(
            lambda r=request: stub.RegisterBaseModel(r, metadata=metadata(fleet), timeout=30)
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, err.details())
        assert field in err.details()
    assert fleet.objects() == before


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=ascii)
def test_submit_job_refuses_a_path_like_output_name(fleet: Fleet, name: str) -> None:
    stub = training_pb2_grpc.TrainingServiceStub(fleet.channel())
    request = training_pb2.SubmitJobRequest(
        base_model="tiny-base",
        dataset="keys-in-prefix",
        dataset_version="a" * 64,
        method=common_pb2.TUNING_METHOD_LORA,
        output_name=name,
    )
    before = fleet.row_counts()
    err = rpc_error(lambda: stub.SubmitJob(request, metadata=metadata(fleet), timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output_name" in err.details()
    assert fleet.row_counts() == before


@pytest.mark.parametrize("tenant", HOSTILE_NAMES + ["acme/other", "acme/../globex"], ids=ascii)
def test_an_api_key_for_a_path_like_tenant_is_refused(fleet: Fleet, tenant: str) -> None:
    """A tenant is a key segment (datasets/<tenant>/...): 'acme/x' would nest in acme's."""
    store = ApiKeyStore(fleet.auth_engine)
    with pytest.raises(InvalidArgument) as err:
        store.create_key("hostile", ["admin"], tenant)
    assert [v.field for v in err.value.violations] == ["tenant"]
