"""The public `data.approved` contract: upstream systems announce approved data.

JSON (content-type application/json, schema in schemas/data.approved.schema.json) or the
protobuf envelope with a posttrain.v1.DataApproved payload. A malformed event, a checksum
mismatch, unreadable or invalid data all end the same way: a dataset.rejected event and a
dead letter that says why; the consumer goes on.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from importlib import resources

import jsonschema
from minio.error import S3Error

from posttrain.data.config import DataFormat, InvalidRowPolicy, RowSchema
from posttrain.events import HandlerContext, PoisonEvent, ReceivedEvent, topics
from posttrain.intake.catalog import DatasetCatalog, UploadSpec
from posttrain.rpc.errors import InvalidArgument
from posttrain.v1 import events_pb2

SCHEMA = json.loads(
    resources.files("posttrain.intake").joinpath("schemas/data.approved.schema.json").read_text()
)
_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class UpstreamApproval:
    event_id: str
    dataset: str
    bucket: str
    key: str
    format: str
    schema: str
    sha256: str
    approved_by: str
    approved_at: str
    source: str
    policy: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    tenant: str = DEFAULT_TENANT


def parse_data_approved(event: ReceivedEvent) -> UpstreamApproval:
    """The announcement in either wire form, or PoisonEvent naming the bad field."""
    if event.is_json:
        doc = event.json()
    else:
        payload = event.payload()
        if not isinstance(payload, events_pb2.DataApproved):
            raise PoisonEvent(f"expected DataApproved, got {type(payload).__name__}")
        doc = {
            "event_id": payload.event_id or event.envelope().event_id,
            "dataset": payload.dataset,
            "uri": payload.uri,
            "format": payload.format,
            "schema": payload.schema,
            "sha256": payload.sha256,
            "approved_by": payload.approved_by,
            "approved_at": payload.approved_at.ToDatetime(dt.UTC).isoformat()
            if payload.HasField("approved_at")
            else "",
            "source": payload.source,
            "labels": dict(payload.labels),
        }
        if payload.policy:
            doc["policy"] = payload.policy
    if not isinstance(doc, dict):
        raise PoisonEvent("a data.approved event must be a JSON object")
    errors = sorted(_VALIDATOR.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        described = "; ".join(
            f"{'.'.join(str(p) for p in e.absolute_path) or '(event)'}: {e.message}"
            for e in errors[:10]
        )
        raise PoisonEvent(f"data.approved does not match its schema: {described}")
    if not _is_rfc3339(doc["approved_at"]):
        raise PoisonEvent(f"approved_at: {doc['approved_at']!r} is not an RFC 3339 date-time")
    bucket, _, key = doc["uri"].removeprefix("s3://").partition("/")
    return UpstreamApproval(
        event_id=doc["event_id"],
        dataset=doc["dataset"],
        bucket=bucket,
        key=key,
        format=doc["format"],
        schema=doc["schema"],
        sha256=doc["sha256"],
        approved_by=doc["approved_by"],
        approved_at=doc["approved_at"],
        source=doc["source"],
        policy=doc.get("policy", ""),
        labels=doc.get("labels", {}),
        tenant=doc.get("tenant", DEFAULT_TENANT),
    )


def _is_rfc3339(value: str) -> bool:
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return "T" in value.upper() and parsed.tzinfo is not None


def handle_data_approved(
    catalog: DatasetCatalog, event: ReceivedEvent, ctx: HandlerContext
) -> None:
    """Ingest one announcement. Refusals are committed (rejection event) and dead-lettered;
    transient storage errors raise, so the consumer retries."""
    dataset_hint = ""
    try:
        approval = parse_data_approved(event)
        dataset_hint = approval.dataset
        spec = UploadSpec(
            tenant=approval.tenant,
            dataset=approval.dataset,
            format=DataFormat(approval.format),
            schema=RowSchema(approval.schema),
            policy=InvalidRowPolicy.REJECT_UPLOAD,
            policy_tag=approval.policy,
            labels=approval.labels,
        )
        prepared = catalog.prepare(
            spec, _object_chunks(catalog, approval), expected_sha256=approval.sha256
        )
    except (PoisonEvent, InvalidArgument) as exc:
        reason = str(exc)
        ctx.emit(
            topics.DATASET_REJECTED,
            events_pb2.DatasetRejected(
                dataset=dataset_hint,
                rejected_by="intake",
                reason=reason,
                source_event_id=_event_id_hint(event),
            ),
            aggregate_id=dataset_hint or "unknown",
        )
        ctx.dead_letter(reason)
        return
    catalog.record(
        ctx.session,
        lambda kind, payload, aggregate: ctx.emit(kind, payload, aggregate_id=aggregate),
        prepared,
        uploaded_by=f"upstream:{approval.source}",
        approved_upstream_by=approval.approved_by,
        source=approval.source,
        source_event_id=approval.event_id,
    )


def _object_chunks(catalog: DatasetCatalog, approval: UpstreamApproval):
    try:
        response = catalog.store.client.get_object(approval.bucket, approval.key)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchBucket", "AccessDenied", "InvalidObjectName"):
            raise PoisonEvent(
                f"uri s3://{approval.bucket}/{approval.key} is unreadable: {exc.code}"
            ) from exc
        raise
    try:
        yield from response.stream(1024 * 1024)
    finally:
        response.close()
        response.release_conn()


def _event_id_hint(event: ReceivedEvent) -> str:
    key = event.dedupe_key()
    return "" if key.startswith("sha256:") else key
