"""The four-eyes approval workflow for regulated datasets."""

from __future__ import annotations

import grpc
import sqlalchemy as sa
from conftest import SAMPLE_ROWS, jsonl, rpc_error, upload_requests

from posttrain.events import topics
from posttrain.intake.tables import AuditRow
from posttrain.v1 import common_pb2, intake_pb2


def _regulated_upload(intake, who: str = "carol") -> str:
    resp = intake.stub(who).UploadDataset(
        upload_requests("claims", jsonl(SAMPLE_ROWS), regulated=True)
    )
    assert resp.version.state == common_pb2.APPROVAL_STATE_PENDING
    return resp.version.version


def _review(version: str, reason: str = "checked the sample") -> intake_pb2.ReviewDatasetRequest:
    return intake_pb2.ReviewDatasetRequest(dataset="claims", version=version, reason=reason)


def test_regulated_version_waits_for_a_second_person(intake):
    version = _regulated_upload(intake)
    assert [t for t, _ in intake.outbox()] == [topics.DATASET_REGISTERED]

    # The uploader holds the approver role but may not approve her own upload.
    own = rpc_error(lambda: intake.stub("carol").ApproveDataset(_review(version)))
    assert own.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "four-eyes" in own.details()
    # A viewer may not approve at all.
    viewer = rpc_error(lambda: intake.stub("eve").ApproveDataset(_review(version)))
    assert viewer.code() == grpc.StatusCode.PERMISSION_DENIED
    # A reason is required.
    no_reason = rpc_error(lambda: intake.stub("bob").ApproveDataset(_review(version, " ")))
    assert no_reason.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reason" in no_reason.details()
    # Another tenant's approver can't even see it.
    other = rpc_error(lambda: intake.stub("mallory").ApproveDataset(_review(version)))
    assert other.code() == grpc.StatusCode.NOT_FOUND

    approved = intake.stub("bob").ApproveDataset(_review(version))
    assert approved.state == common_pb2.APPROVAL_STATE_APPROVED
    assert approved.approved_by == "bob" and approved.review_reason == "checked the sample"
    assert [t for t, _ in intake.outbox()] == [topics.DATASET_REGISTERED, topics.DATASET_APPROVED]

    again = rpc_error(lambda: intake.stub("bob").RejectDataset(_review(version)))
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION

    with intake.engine.connect() as conn:
        audit = conn.execute(
            sa.select(AuditRow.actor, AuditRow.action, AuditRow.reason).order_by(AuditRow.id)
        ).all()
    assert [(a.actor, a.action) for a in audit] == [("carol", "registered"), ("bob", "approved")]
    assert audit[1].reason == "checked the sample"


def test_rejection_is_recorded_with_its_reason_and_announced(intake):
    version = _regulated_upload(intake, who="alice")
    rejected = intake.stub("bob").RejectDataset(_review(version, "contains customer names"))
    assert rejected.state == common_pb2.APPROVAL_STATE_REJECTED
    assert rejected.review_reason == "contains customer names"
    assert [t for t, _ in intake.outbox()][-1] == topics.DATASET_REJECTED
    got = intake.stub("eve").GetVersion(
        intake_pb2.GetVersionRequest(dataset="claims", version=version)
    )
    assert got.state == common_pb2.APPROVAL_STATE_REJECTED
