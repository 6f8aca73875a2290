"""DatasetCatalog: how a file becomes an immutable, content-addressed dataset version.

Two phases, so that nothing half-made is ever visible:
  1. `prepare`: stream the upload through validation into temporary files, then publish
     them as one folder artifact (train.jsonl, eval.jsonl, report.json + manifest). The
     artifact store makes that atomic and content-addressed; no DB row exists yet, so a
     crash here leaves nothing a user can see.
  2. `record`: one DB transaction inserts the version row, its audit entry and its
     events (outbox). The same content uploaded again finds its row and changes nothing.
Approval (four eyes for regulated datasets) moves a PENDING version to APPROVED or
REJECTED, audited. Knows nothing of gRPC or Kafka: callers pass a Session and `emit`.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from sqlalchemy.orm import Session

from posttrain.data import IntakeConfig, TokenCounter, ValidationResult, diff, run_intake
from posttrain.data.config import DataFormat, InvalidRowPolicy, RowSchema
from posttrain.db import utcnow
from posttrain.events import topics
from posttrain.intake import metrics
from posttrain.intake.tables import AuditRow, DatasetRow, DatasetVersionRow
from posttrain.rpc.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from posttrain.storage import ArtifactExists, ArtifactRef, ArtifactStore
from posttrain.storage.keys import check_segment
from posttrain.v1 import common_pb2, events_pb2

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
MAX_REPORTED_VIOLATIONS = 50  # in an error status; the full list is in the report

PENDING, APPROVED, REJECTED = "PENDING", "APPROVED", "REJECTED"
STATE_TO_PROTO = {
    PENDING: common_pb2.APPROVAL_STATE_PENDING,
    APPROVED: common_pb2.APPROVAL_STATE_APPROVED,
    REJECTED: common_pb2.APPROVAL_STATE_REJECTED,
}

# emit(event_type, payload, aggregate_id): stage an event in the caller's transaction.
Emit = Callable[[str, Message, str], object]


@dataclass(frozen=True)
class UploadSpec:
    """What the uploader declares about a file (UploadMetadata, or a data.approved event)."""

    tenant: str
    dataset: str
    format: DataFormat
    schema: RowSchema
    policy: InvalidRowPolicy = InvalidRowPolicy.REJECT_UPLOAD
    description: str = ""
    regulated: bool = False
    policy_tag: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    parent_version: str = ""


@dataclass(frozen=True)
class PreparedVersion:
    spec: UploadSpec
    result: ValidationResult
    manifest: ArtifactRef
    sha256: str  # of the uploaded bytes as received


@dataclass(frozen=True)
class RecordedVersion:
    row: DatasetVersionRow
    dataset: DatasetRow
    already_existed: bool


def check_name(value: str, field_name: str) -> str:
    if not value:
        raise InvalidArgument(field_name, "is required")
    if not NAME_PATTERN.match(value):
        raise InvalidArgument(
            field_name,
            f"{value[:120]!r} is not a valid name: use 1-100 of a-z 0-9 . _ - "
            "starting with a letter or digit",
        )
    return value


def check_version_id(value: str, field_name: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", value or ""):
        raise InvalidArgument(field_name, "must be a 64-character lowercase hex dataset version")
    return value


class _HashingChunks:
    """Iterates byte chunks and keeps the sha256 and size of what went through."""

    def __init__(self, chunks: Iterable[bytes]):
        import hashlib

        self._chunks = chunks
        self.sha = hashlib.sha256()
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.sha.update(chunk)
            self.size += len(chunk)
            yield chunk


class DatasetCatalog:
    def __init__(
        self,
        store: ArtifactStore,
        *,
        spool_dir: str | None = None,
        auto_approve_unregulated: bool = True,
        config: IntakeConfig | None = None,
    ):
        self.store = store
        self.spool_dir = spool_dir
        self.auto_approve_unregulated = auto_approve_unregulated
        self.base_config = config or IntakeConfig()
        self._bucket_checked = False

    # ------------------------------------------------------------------ phase 1

    def prepare(
        self,
        spec: UploadSpec,
        chunks: Iterable[bytes],
        *,
        expected_sha256: str = "",
        token_counter: TokenCounter | None = None,
    ) -> PreparedVersion:
        """Validate the streamed file and publish its normalised form. Raises
        InvalidArgument with row-level violations when the upload is refused, or when
        the bytes don't hash to `expected_sha256` (checked before anything is stored)."""
        check_name(spec.dataset, "dataset")
        if not self._bucket_checked:
            self.store.ensure_bucket()
            self._bucket_checked = True
        config = _replace_config(self.base_config, spec)
        hashing = _HashingChunks(chunks)
        if self.spool_dir:
            Path(self.spool_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.spool_dir, prefix="upload-") as tmp:
            train_path, eval_path = Path(tmp) / "train.jsonl", Path(tmp) / "eval.jsonl"
            with open(train_path, "wb") as train, open(eval_path, "wb") as evals:
                result = run_intake(
                    iter(hashing), config, train, evals, token_counter=token_counter, spool_dir=tmp
                )
            received = hashing.sha.hexdigest()
            if expected_sha256 and received != expected_sha256:
                metrics.VERSIONS.labels("refused").inc()
                raise InvalidArgument(
                    "sha256",
                    f"checksum mismatch: the object hashes to {received}, "
                    f"the event says {expected_sha256}",
                )
            metrics.count_rows(result)
            if not result.accepted:
                metrics.VERSIONS.labels("refused").inc()
                raise _refused(result)
            report = result.to_proto(dataset=spec.dataset)
            # dataset.json: how to verify and reproduce the version (rules, counts, split).
            description = result.manifest()
            description.update(
                dataset=spec.dataset,
                tenant=spec.tenant,
                upload_sha256=hashing.sha.hexdigest(),
                upload_bytes=hashing.size,
                parent_version=spec.parent_version,
            )
            name = artifact_name(spec.tenant, spec.dataset, result.version)
            if self.store.exists(name):
                # The same rows were stored before (perhaps in another order or format):
                # the version is the row set, so the first stored form stands.
                ref = self.store.resolve(name)
                return PreparedVersion(spec=spec, result=result, manifest=ref, sha256=received)
            try:
                ref = self.store.publish_files(
                    {
                        "train.jsonl": train_path,
                        "eval.jsonl": eval_path,
                        "dataset.json": json.dumps(description, indent=1, sort_keys=True).encode(),
                        "report.json": json.dumps(
                            MessageToDict(report, preserving_proto_field_name=True), indent=1
                        ).encode(),
                    },
                    name,
                    metadata={
                        "kind": "dataset-version",
                        "tenant": spec.tenant,
                        "dataset": spec.dataset,
                        "version": result.version,
                        "rows": str(result.rows_stored),
                    },
                )
            except ArtifactExists:  # a concurrent upload of the same rows won
                ref = self.store.resolve(name)
        return PreparedVersion(
            spec=spec, result=result, manifest=ref, sha256=hashing.sha.hexdigest()
        )

    # ------------------------------------------------------------------ phase 2

    def record(
        self,
        session: Session,
        emit: Emit,
        prepared: PreparedVersion,
        *,
        uploaded_by: str,
        approved_upstream_by: str = "",
        source: str = "",
        source_event_id: str = "",
    ) -> RecordedVersion:
        """Insert the version (or find it), audit it and stage its events."""
        spec, result = prepared.spec, prepared.result
        dataset = self._dataset_for_upload(session, spec, uploaded_by)
        existing = session.scalar(
            sa.select(DatasetVersionRow).where(
                DatasetVersionRow.dataset_id == dataset.id,
                DatasetVersionRow.version == result.version,
            )
        )
        if existing is not None:
            metrics.VERSIONS.labels("existing").inc()
            return RecordedVersion(row=existing, dataset=dataset, already_existed=True)

        if approved_upstream_by:
            state, reviewer, reason = (
                APPROVED,
                approved_upstream_by,
                f"approved upstream in {source}",
            )
        elif dataset.regulated:
            state, reviewer, reason = PENDING, "", ""
        elif self.auto_approve_unregulated:
            state, reviewer, reason = (
                APPROVED,
                "auto",
                "not regulated: auto-approved by configuration",
            )
        else:
            state, reviewer, reason = PENDING, "", ""
        now = utcnow()
        row = DatasetVersionRow(
            dataset_id=dataset.id,
            version=result.version,
            state=state,
            schema=str(spec.schema),
            rows=result.rows_stored,
            train_rows=result.split.train_rows,
            eval_rows=result.split.eval_rows,
            manifest_uri=prepared.manifest.uri,
            manifest_sha256=prepared.manifest.sha256,
            manifest_size=prepared.manifest.size_bytes,
            uploaded_by=uploaded_by,
            reviewed_by=reviewer,
            review_reason=reason,
            reviewed_at=now if state == APPROVED else None,
            source=source or "upload",
            source_event_id=source_event_id,
            parent_version=spec.parent_version,
            policy=spec.policy_tag,
            labels=dict(spec.labels),
            report=result.to_proto(dataset=spec.dataset).SerializeToString(),
            created_at=now,
        )
        session.add(row)
        session.flush()
        subject = f"{dataset.tenant}/{dataset.name}@{result.version}"
        _audit(
            session,
            uploaded_by,
            "registered",
            subject,
            "",
            {"rows": result.rows_stored, "source": row.source},
        )
        emit(
            topics.DATASET_REGISTERED,
            events_pb2.DatasetRegistered(
                dataset=dataset.name,
                version=result.version,
                state=STATE_TO_PROTO[state],
                manifest=prepared.manifest.to_proto(),
                rows=result.rows_stored,
                uploaded_by=uploaded_by,
                regulated=dataset.regulated,
            ),
            dataset.name,
        )
        if state == APPROVED:
            _audit(session, reviewer, "approved", subject, reason, {})
            emit(topics.DATASET_APPROVED, self._approved_event(dataset, row), dataset.name)
        metrics.VERSIONS.labels("created").inc()
        return RecordedVersion(row=row, dataset=dataset, already_existed=False)

    def _dataset_for_upload(self, session: Session, spec: UploadSpec, actor: str) -> DatasetRow:
        dataset = session.scalar(
            sa.select(DatasetRow).where(
                DatasetRow.tenant == spec.tenant, DatasetRow.name == spec.dataset
            )
        )
        if dataset is None:
            dataset = DatasetRow(
                tenant=spec.tenant,
                name=spec.dataset,
                description=spec.description,
                regulated=spec.regulated,
                created_at=utcnow(),
                created_by=actor,
            )
            session.add(dataset)
            session.flush()
        elif spec.regulated and not dataset.regulated:
            # Regulation can be switched on for later versions, never silently off.
            dataset.regulated = True
        if spec.description and not dataset.description:
            dataset.description = spec.description
        return dataset

    # ------------------------------------------------------------------ approval

    def review(
        self,
        session: Session,
        emit: Emit,
        *,
        tenant: str,
        dataset: str,
        version: str,
        reviewer: str,
        approve: bool,
        reason: str,
    ) -> tuple[DatasetRow, DatasetVersionRow]:
        """Four eyes: the reviewer must not be the uploader; only PENDING versions move."""
        if not reason.strip():
            raise InvalidArgument("reason", "a reason is required to approve or reject")
        ds, row = self.get_version(session, tenant, dataset, version, for_update=True)
        if row.state != PENDING:
            raise FailedPrecondition(
                f"version {version[:12]} of {dataset} is {row.state}, not PENDING_APPROVAL"
            )
        if reviewer == row.uploaded_by:
            raise PermissionDenied(
                f"{reviewer} uploaded version {version[:12]} of {dataset}: "
                "a different approver must review it (four-eyes rule)"
            )
        row.state = APPROVED if approve else REJECTED
        row.reviewed_by = reviewer
        row.review_reason = reason
        row.reviewed_at = utcnow()
        subject = f"{ds.tenant}/{ds.name}@{version}"
        _audit(session, reviewer, "approved" if approve else "rejected", subject, reason, {})
        if approve:
            emit(topics.DATASET_APPROVED, self._approved_event(ds, row), ds.name)
        else:
            emit(
                topics.DATASET_REJECTED,
                events_pb2.DatasetRejected(
                    dataset=ds.name, version=version, rejected_by=reviewer, reason=reason
                ),
                ds.name,
            )
        return ds, row

    def _approved_event(self, ds: DatasetRow, row: DatasetVersionRow) -> events_pb2.DatasetApproved:
        return events_pb2.DatasetApproved(
            dataset=ds.name,
            version=row.version,
            approved_by=row.reviewed_by,
            reason=row.review_reason,
            manifest=manifest_ref(row).to_proto(),
        )

    # ------------------------------------------------------------------ queries

    def get_dataset(self, session: Session, tenant: str, name: str) -> DatasetRow:
        check_name(name, "dataset")
        ds = session.scalar(
            sa.select(DatasetRow).where(DatasetRow.tenant == tenant, DatasetRow.name == name)
        )
        if ds is None:
            raise NotFound("dataset", name)
        return ds

    def get_version(
        self, session: Session, tenant: str, dataset: str, version: str, *, for_update: bool = False
    ) -> tuple[DatasetRow, DatasetVersionRow]:
        ds = self.get_dataset(session, tenant, dataset)
        check_version_id(version, "version")
        query = sa.select(DatasetVersionRow).where(
            DatasetVersionRow.dataset_id == ds.id, DatasetVersionRow.version == version
        )
        if for_update:
            query = query.with_for_update()
        row = session.scalar(query)
        if row is None:
            raise NotFound("dataset version", f"{dataset}@{version}")
        return ds, row

    def list_datasets(self, session: Session, tenant: str, offset: int, limit: int):
        total = session.scalar(
            sa.select(sa.func.count()).select_from(DatasetRow).where(DatasetRow.tenant == tenant)
        )
        rows = session.scalars(
            sa.select(DatasetRow)
            .where(DatasetRow.tenant == tenant)
            .order_by(DatasetRow.name)
            .offset(offset)
            .limit(limit)
        ).all()
        return rows, total or 0

    def list_versions(self, session: Session, ds: DatasetRow, offset: int, limit: int):
        total = session.scalar(
            sa.select(sa.func.count()).where(DatasetVersionRow.dataset_id == ds.id)
        )
        rows = session.scalars(
            sa.select(DatasetVersionRow)
            .where(DatasetVersionRow.dataset_id == ds.id)
            .order_by(DatasetVersionRow.created_at.desc(), DatasetVersionRow.id.desc())
            .offset(offset)
            .limit(limit)
        ).all()
        return rows, total or 0

    def latest_version(self, session: Session, ds: DatasetRow) -> DatasetVersionRow | None:
        return session.scalar(
            sa.select(DatasetVersionRow)
            .where(DatasetVersionRow.dataset_id == ds.id)
            .order_by(DatasetVersionRow.created_at.desc(), DatasetVersionRow.id.desc())
            .limit(1)
        )

    def count_versions(self, session: Session, ds: DatasetRow) -> int:
        return (
            session.scalar(sa.select(sa.func.count()).where(DatasetVersionRow.dataset_id == ds.id))
            or 0
        )

    def iter_rows(self, row: DatasetVersionRow) -> Iterator[bytes]:
        """The stored normalised rows (train then eval), checked against the manifest."""
        manifest = self.store.get_manifest(manifest_ref(row))
        for name in ("train.jsonl", "eval.jsonl"):
            entry = next(e for e in manifest.files if e.path == name)
            buffer = b""
            for chunk in self.store.iter_bytes(self.store.file_ref(entry)):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                yield from (line for line in lines if line)
            if buffer:
                yield buffer

    def diff_versions(self, a: DatasetVersionRow, b: DatasetVersionRow, max_samples: int):
        return diff(lambda: self.iter_rows(a), lambda: self.iter_rows(b), max_samples=max_samples)


def artifact_name(tenant: str, dataset: str, version: str) -> str:
    # Each part one key segment, so no tenant or name can reach another's prefix.
    for value, argument in ((tenant, "tenant"), (dataset, "dataset"), (version, "version")):
        check_segment(value, argument)
    return f"datasets/{tenant}/{dataset}/{version}"


def manifest_ref(row: DatasetVersionRow) -> ArtifactRef:
    return ArtifactRef(
        uri=row.manifest_uri,
        sha256=row.manifest_sha256,
        size_bytes=row.manifest_size,
        media_type="application/vnd.posttrain.manifest+json",
    )


def _audit(
    session: Session, actor: str, action: str, subject: str, reason: str, details: dict
) -> None:
    session.add(
        AuditRow(
            at=utcnow(), actor=actor, action=action, subject=subject, reason=reason, details=details
        )
    )


def _replace_config(base: IntakeConfig, spec: UploadSpec) -> IntakeConfig:
    from dataclasses import replace

    return replace(base, format=spec.format, schema=spec.schema, policy=spec.policy)


def _refused(result: ValidationResult) -> InvalidArgument:
    shown = result.errors[:MAX_REPORTED_VIOLATIONS]
    violations = [
        FieldViolation(field=v.field or "file", message=v.message, code=str(v.code), row=v.row)
        for v in shown
    ]
    if not violations:
        violations = [FieldViolation(field="file", message="no valid rows", code="no_rows")]
    more = result.errors_total - len(shown)
    head = f"upload refused: {result.errors_total} invalid row(s) of {result.rows_total}"
    if more > 0:
        head += f" (first {len(shown)} listed)"
    return InvalidArgument(message=head, violations=violations)
