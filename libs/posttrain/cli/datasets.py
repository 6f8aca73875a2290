"""`posttrain datasets ...`: upload, list, show, approve, reject, report, diff."""

from __future__ import annotations

from pathlib import Path

import click

from posttrain.cli.common import (
    api_key_option,
    channel,
    grpc_errors,
    json_option,
    print_json,
    print_table,
    target_option,
)
from posttrain.v1 import common_pb2, intake_pb2, intake_pb2_grpc

FORMATS = {
    "jsonl": intake_pb2.DATA_FORMAT_JSONL,
    "csv": intake_pb2.DATA_FORMAT_CSV,
    "parquet": intake_pb2.DATA_FORMAT_PARQUET,
}
SCHEMAS = {"chat": intake_pb2.ROW_SCHEMA_CHAT, "instruction": intake_pb2.ROW_SCHEMA_INSTRUCTION}
STATES = {v: k.removeprefix("APPROVAL_STATE_") for k, v in common_pb2.ApprovalState.items()}
CHUNK = 1 << 20


def _stub(target: str, api_key: str) -> intake_pb2_grpc.IntakeServiceStub:
    return intake_pb2_grpc.IntakeServiceStub(channel(target, api_key))


def upload_file(
    stub: intake_pb2_grpc.IntakeServiceStub,
    path: Path,
    metadata: intake_pb2.UploadMetadata,
) -> intake_pb2.UploadDatasetResponse:
    """Stream a file to UploadDataset in 1 MiB chunks (the file is never read whole)."""

    def requests():
        yield intake_pb2.UploadDatasetRequest(metadata=metadata)
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                yield intake_pb2.UploadDatasetRequest(chunk=block)

    return stub.UploadDataset(requests())


@click.group()
def datasets() -> None:
    """Training data: upload, inspect, approve (intake service)."""


@datasets.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="dataset name")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(sorted(FORMATS)),
    default=None,
    help="default: from the file extension",
)
@click.option("--schema", type=click.Choice(sorted(SCHEMAS)), default="chat", show_default=True)
@click.option("--regulated", is_flag=True, help="needs approval by a second person")
@click.option("--drop-invalid", is_flag=True, help="keep valid rows instead of refusing the file")
@click.option("--description", default="")
@target_option("intake")
@api_key_option
@json_option
@grpc_errors
def upload(path, name, fmt, schema, regulated, drop_invalid, description, target, api_key, as_json):
    """Upload a JSONL/CSV/Parquet file as a new dataset version."""
    fmt = fmt or path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise click.BadParameter(
            f"can't tell the format of {path.name}; pass --format", param_hint="--format"
        )
    metadata = intake_pb2.UploadMetadata(
        dataset=name,
        format=FORMATS[fmt],
        schema=SCHEMAS[schema],
        regulated=regulated,
        description=description,
        invalid_rows=intake_pb2.INVALID_ROW_POLICY_DROP_INVALID
        if drop_invalid
        else intake_pb2.INVALID_ROW_POLICY_REJECT_UPLOAD,
    )
    resp = upload_file(_stub(target, api_key), path, metadata)
    if as_json:
        print_json(resp)
        return
    v = resp.version
    what = "already stored as" if resp.already_existed else "stored as"
    click.echo(f"{name}: {what} version {v.version} ({STATES[v.state]})")
    click.echo(
        f"  rows {v.rows} (train {v.train_rows}, eval {v.eval_rows}); "
        f"dropped {resp.report.rows_dropped}, duplicates {resp.report.duplicates_removed}, "
        f"PII findings {len(resp.report.pii_findings)}"
    )


@datasets.command("list")
@target_option("intake")
@api_key_option
@json_option
@grpc_errors
def list_(target, api_key, as_json):
    """Datasets of your tenant."""
    resp = _stub(target, api_key).ListDatasets(intake_pb2.ListDatasetsRequest())
    if as_json:
        print_json(list(resp.datasets))
        return
    print_table(
        "datasets",
        ["name", "versions", "latest", "regulated"],
        [[d.name, d.version_count, d.latest_version[:12], d.regulated] for d in resp.datasets],
    )


@datasets.command()
@click.argument("name")
@target_option("intake")
@api_key_option
@json_option
@grpc_errors
def show(name, target, api_key, as_json):
    """Versions of one dataset, newest first."""
    resp = _stub(target, api_key).ListVersions(intake_pb2.ListVersionsRequest(dataset=name))
    if as_json:
        print_json(list(resp.versions))
        return
    print_table(
        f"versions of {name}",
        ["version", "state", "rows", "uploaded by", "approved by", "source"],
        [
            [v.version[:12], STATES[v.state], v.rows, v.uploaded_by, v.approved_by, v.source]
            for v in resp.versions
        ],
    )


def _review_command(approve: bool):
    @click.argument("name")
    @click.argument("version")
    @click.option("--reason", required=True, help="why; recorded in the audit log")
    @target_option("intake")
    @api_key_option
    @json_option
    @grpc_errors
    def review(name, version, reason, target, api_key, as_json):
        stub = _stub(target, api_key)
        call = stub.ApproveDataset if approve else stub.RejectDataset
        v = call(intake_pb2.ReviewDatasetRequest(dataset=name, version=version, reason=reason))
        if as_json:
            print_json(v)
        else:
            click.echo(f"{name}@{v.version[:12]}: {STATES[v.state]}")

    return review


datasets.command("approve", help="Approve a pending version (not your own upload).")(
    _review_command(True)
)
datasets.command("reject", help="Reject a pending version, with a reason.")(_review_command(False))


@datasets.command()
@click.argument("name")
@click.argument("version")
@target_option("intake")
@api_key_option
@json_option
@grpc_errors
def report(name, version, target, api_key, as_json):
    """The validation report of a version: counts, row errors, PII findings."""
    r = _stub(target, api_key).GetValidationReport(
        intake_pb2.GetValidationReportRequest(dataset=name, version=version)
    )
    if as_json:
        print_json(r)
        return
    click.echo(
        f"rows {r.rows_total}: valid {r.rows_valid}, dropped {r.rows_dropped}, "
        f"duplicates {r.duplicates_removed}, tokens {r.tokens_total}"
    )
    for v in list(r.errors)[:50]:
        click.echo(f"  error row {v.row} {v.field}: {v.message}")
    for v in list(r.pii_findings)[:50]:
        click.echo(f"  PII   row {v.row} {v.field}: {v.message}")


@datasets.command()
@click.argument("name")
@click.argument("from_version")
@click.argument("to_version")
@click.option("--samples", default=3, show_default=True, help="rows to show each way")
@target_option("intake")
@api_key_option
@json_option
@grpc_errors
def diff(name, from_version, to_version, samples, target, api_key, as_json):
    """Rows added and removed between two versions."""
    d = _stub(target, api_key).DiffVersions(
        intake_pb2.DiffVersionsRequest(
            dataset=name, from_version=from_version, to_version=to_version, max_rows=samples
        )
    )
    if as_json:
        print_json(d)
        return
    click.echo(f"+{d.rows_added} rows, -{d.rows_removed} rows")
    for s in d.added_samples:
        click.echo(f"  + {s[:160]}")
    for s in d.removed_samples:
        click.echo(f"  - {s[:160]}")
