"""UploadDataset and the queries, over real gRPC, S3 and SQLite/PostgreSQL."""

from __future__ import annotations

import csv
import io
import json

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from conftest import SAMPLE_ROWS, chat_row, jsonl, rpc_error, upload_requests

from posttrain.events import topics, unpack
from posttrain.intake.tables import DatasetRow, DatasetVersionRow
from posttrain.rpc.errors import field_violations
from posttrain.v1 import common_pb2, intake_pb2


def test_upload_creates_an_approved_version_with_report_and_events(intake):
    stub = intake.stub("alice")
    resp = stub.UploadDataset(upload_requests("support", jsonl(SAMPLE_ROWS)))
    version = resp.version
    assert not resp.already_existed
    assert version.state == common_pb2.APPROVAL_STATE_APPROVED  # not regulated: auto
    assert version.rows == 12 and version.train_rows + version.eval_rows == 12
    assert version.eval_rows >= 1 and len(version.version) == 64
    assert version.uploaded_by == "alice" and version.approved_by == "auto"
    assert resp.report.rows_total == 12 and resp.report.rows_valid == 12
    assert resp.report.role_counts["assistant"] == 12

    # What the trainer will ask, and the stored artifact behind it.
    got = intake.stub("eve").GetVersion(
        intake_pb2.GetVersionRequest(dataset="support", version=version.version)
    )
    assert got.state == common_pb2.APPROVAL_STATE_APPROVED
    manifest = intake.store.get_manifest(f"datasets/acme/support/{version.version}")
    assert {f.path for f in manifest.files} == {
        "train.jsonl",
        "eval.jsonl",
        "dataset.json",
        "report.json",
    }
    stored = list(intake.catalog.iter_rows(_row(intake, version.version)))
    assert len(stored) == 12
    assert json.loads(stored[0])["messages"][1]["role"] == "assistant"

    events = intake.outbox()
    assert [t for t, _ in events] == [topics.DATASET_REGISTERED, topics.DATASET_APPROVED]
    approved = unpack(events[1][1])
    assert (approved.dataset, approved.version) == ("support", version.version)
    assert approved.manifest.sha256 == version.manifest.sha256

    listed = intake.stub("eve").ListDatasets(intake_pb2.ListDatasetsRequest())
    assert [d.name for d in listed.datasets] == ["support"]
    assert listed.datasets[0].latest_version == version.version
    report = intake.stub("eve").GetValidationReport(
        intake_pb2.GetValidationReportRequest(dataset="support", version=version.version)
    )
    assert report.rows_valid == 12


def test_same_content_in_another_order_is_the_same_version(intake):
    stub = intake.stub("alice")
    first = stub.UploadDataset(upload_requests("support", jsonl(SAMPLE_ROWS)))
    again = stub.UploadDataset(upload_requests("support", jsonl(SAMPLE_ROWS[::-1]), chunk=7))
    assert again.already_existed
    assert again.version.version == first.version.version
    versions = stub.ListVersions(intake_pb2.ListVersionsRequest(dataset="support"))
    assert len(versions.versions) == 1
    assert len(intake.outbox()) == 2  # no second registration


def test_bad_rows_are_refused_with_row_and_field_and_nothing_is_stored(intake):
    rows = [
        chat_row("hi", "hello"),
        {"messages": [{"role": "user", "content": "q"}, {"role": "wizard", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}]},
    ]
    data = jsonl(rows) + b"{not json\n"
    err = rpc_error(lambda: intake.stub("alice").UploadDataset(upload_requests("bad", data)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = {(v.row, v.field) for v in field_violations(err)}
    assert (2, "messages[1].role") in found
    assert any(row == 3 for row, _ in found)
    assert any(row == 4 for row, _ in found)
    assert "3 invalid row(s) of 4" in err.details()
    with intake.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(DatasetRow)) == 0
    assert intake.dataset_objects() == []
    assert intake.outbox() == []


def test_drop_invalid_policy_keeps_valid_rows_and_reports_the_dropped(intake):
    data = jsonl(SAMPLE_ROWS[:3]) + b'{"messages": []}\n'
    resp = intake.stub("alice").UploadDataset(
        upload_requests("lenient", data, policy=intake_pb2.INVALID_ROW_POLICY_DROP_INVALID)
    )
    assert resp.version.rows == 3
    assert resp.report.rows_dropped == 1
    assert [e.row for e in resp.report.errors] == [4]


def test_csv_parquet_and_instruction_forms_normalise_to_the_same_version(intake):
    stub = intake.stub("alice")
    rows = [("Translate hi", "", "Bonjour"), ("Sum 2 and 3", "", "5"), ("Name a color", "", "Red")]
    instruction = [{"instruction": i, "input": x, "response": r} for i, x, r in rows]
    by_jsonl = stub.UploadDataset(
        upload_requests("forms", jsonl(instruction), schema=intake_pb2.ROW_SCHEMA_INSTRUCTION)
    ).version.version

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["instruction", "input", "response"])
    writer.writeheader()
    writer.writerows(instruction)
    by_csv = stub.UploadDataset(
        upload_requests(
            "forms",
            text.getvalue().encode(),
            fmt=intake_pb2.DATA_FORMAT_CSV,
            schema=intake_pb2.ROW_SCHEMA_INSTRUCTION,
        )
    )
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(instruction), sink)
    by_parquet = stub.UploadDataset(
        upload_requests(
            "forms",
            sink.getvalue(),
            fmt=intake_pb2.DATA_FORMAT_PARQUET,
            schema=intake_pb2.ROW_SCHEMA_INSTRUCTION,
        )
    )
    chat = [chat_row(i, r) for i, _, r in rows]
    by_chat = stub.UploadDataset(upload_requests("forms", jsonl(chat)))
    assert by_csv.already_existed and by_parquet.already_existed and by_chat.already_existed
    assert {by_csv.version.version, by_parquet.version.version, by_chat.version.version} == {
        by_jsonl
    }


def test_a_broken_stream_leaves_no_version_behind(intake):
    def broken():
        requests = upload_requests("broken", jsonl(SAMPLE_ROWS * 50), chunk=1024)
        for index, request in enumerate(requests):
            if index == 5:
                raise RuntimeError("client went away")
            yield request

    err = rpc_error(lambda: intake.stub("alice").UploadDataset(broken()))
    assert err.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)
    with intake.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(DatasetVersionRow)) == 0
    assert intake.dataset_objects() == []


def test_every_argument_error_names_its_field(intake):
    stub = intake.stub("alice")

    def only_chunks():
        yield intake_pb2.UploadDatasetRequest(chunk=b"{}")

    cases = [
        (lambda: stub.UploadDataset(only_chunks()), "metadata"),
        (lambda: stub.UploadDataset(upload_requests("../etc", b"")), "metadata.dataset"),
        (
            lambda: stub.UploadDataset(
                upload_requests("x", b"", fmt=intake_pb2.DATA_FORMAT_UNSPECIFIED)
            ),
            "metadata.format",
        ),
        (
            lambda: stub.UploadDataset(
                upload_requests("x", b"", schema=intake_pb2.ROW_SCHEMA_UNSPECIFIED)
            ),
            "metadata.schema",
        ),
        (
            lambda: stub.GetVersion(intake_pb2.GetVersionRequest(dataset="x", version="zz")),
            "dataset",  # unknown dataset is checked first
        ),
        (
            lambda: stub.ListDatasets(
                intake_pb2.ListDatasetsRequest(page=common_pb2.PageRequest(page_size=10_000))
            ),
            "page.page_size",
        ),
    ]
    for call, field in cases:
        err = rpc_error(call)
        assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), field
        assert field in err.details(), (field, err.details())


def test_a_tenant_sees_only_its_own_datasets(intake):
    version = (
        intake.stub("alice")
        .UploadDataset(upload_requests("support", jsonl(SAMPLE_ROWS)))
        .version.version
    )
    other = intake.stub("mallory")
    assert other.ListDatasets(intake_pb2.ListDatasetsRequest()).datasets == []
    err = rpc_error(
        lambda: other.GetVersion(intake_pb2.GetVersionRequest(dataset="support", version=version))
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_diff_of_two_versions_lists_added_and_removed_rows(intake):
    stub = intake.stub("alice")
    a = stub.UploadDataset(upload_requests("support", jsonl(SAMPLE_ROWS[:8]))).version.version
    b = stub.UploadDataset(upload_requests("support", jsonl(SAMPLE_ROWS[3:]))).version.version
    d = stub.DiffVersions(
        intake_pb2.DiffVersionsRequest(dataset="support", from_version=a, to_version=b, max_rows=2)
    )
    assert (d.rows_added, d.rows_removed) == (4, 3)
    assert len(d.added_samples) == 2 and len(d.removed_samples) == 2


def _row(intake, version: str) -> DatasetVersionRow:
    from sqlalchemy.orm import Session

    with Session(intake.engine) as session:
        return session.scalar(
            sa.select(DatasetVersionRow).where(DatasetVersionRow.version == version)
        )
