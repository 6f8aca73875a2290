"""The IntakeService gRPC servicer and the data.approved handler: thin shells over
posttrain.intake.

Who may call what (admin may do everything):
  UploadDataset                          uploader
  ApproveDataset, RejectDataset          approver (and not the version's uploader)
  Get*/List*/DiffVersions/GetVersion     any authenticated principal of the tenant
A principal sees only its own tenant's datasets.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
from google.protobuf.message import Message
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from posttrain.data.config import DataFormat, InvalidRowPolicy, RowSchema
from posttrain.db import apply_migrations, session_scope
from posttrain.events import EVENTS_MIGRATIONS, EventRuntime, add_to_outbox, topics
from posttrain.faults import crash_point
from posttrain.intake import (
    INTAKE_MIGRATIONS,
    STATE_TO_PROTO,
    DatasetCatalog,
    UploadSpec,
    check_name,
    check_version_id,
    handle_data_approved,
    manifest_ref,
)
from posttrain.intake.tables import DatasetRow, DatasetVersionRow
from posttrain.intake.tokenizers import TokenizerCache
from posttrain.rpc.auth import Principal, current_principal, require_role
from posttrain.rpc.client import forwarded_credentials, make_channel
from posttrain.rpc.errors import InvalidArgument, Unavailable
from posttrain.rpc.paging import page_bounds, page_response
from posttrain.rpc.server import AddServicerFn
from posttrain.storage import ArtifactRef, ArtifactStore
from posttrain.v1 import intake_pb2, intake_pb2_grpc, registry_pb2, registry_pb2_grpc
from services.intake.settings import IntakeSettings

SERVICE_NAME = intake_pb2.DESCRIPTOR.services_by_name["IntakeService"].full_name
READ_ROLES = ("viewer", "uploader", "approver", "trainer", "operator", "rater")

_FORMATS = {
    intake_pb2.DATA_FORMAT_JSONL: DataFormat.JSONL,
    intake_pb2.DATA_FORMAT_CSV: DataFormat.CSV,
    intake_pb2.DATA_FORMAT_PARQUET: DataFormat.PARQUET,
}
_SCHEMAS = {
    intake_pb2.ROW_SCHEMA_INSTRUCTION: RowSchema.INSTRUCTION,
    intake_pb2.ROW_SCHEMA_CHAT: RowSchema.CHAT,
}
_POLICIES = {
    intake_pb2.INVALID_ROW_POLICY_UNSPECIFIED: InvalidRowPolicy.REJECT_UPLOAD,
    intake_pb2.INVALID_ROW_POLICY_REJECT_UPLOAD: InvalidRowPolicy.REJECT_UPLOAD,
    intake_pb2.INVALID_ROW_POLICY_DROP_INVALID: InvalidRowPolicy.DROP_INVALID,
}

log = logging.getLogger(__name__)


class IntakeServicer(intake_pb2_grpc.IntakeServiceServicer):
    def __init__(
        self,
        settings: IntakeSettings,
        engine: Engine,
        catalog: DatasetCatalog,
        base_model_weights=None,
    ):
        self.settings = settings
        self.engine = engine
        self.catalog = catalog
        # (name, credentials) -> ArtifactRef of the base model's folder; tests stand in.
        self.base_model_weights = base_model_weights or RegistryBaseModels(settings.registry_target)
        self.tokenizers = TokenizerCache(catalog.store, Path(settings.state_dir) / "tokenizers")

    # ------------------------------------------------------------------ upload

    def UploadDataset(self, request_iterator, context):
        principal = require_role(current_principal(), "uploader")
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "metadata":
            raise InvalidArgument("metadata", "the first UploadDatasetRequest must carry metadata")
        spec = self._spec(first.metadata, principal)
        counter = None
        if first.metadata.tokenizer_base_model:
            counter = self._token_counter(first.metadata.tokenizer_base_model, context)
        prepared = self.catalog.prepare(spec, self._chunks(request_iterator), token_counter=counter)
        with session_scope(self.engine) as session:
            recorded = self.catalog.record(
                session, _outbox_emit(session), prepared, uploaded_by=principal.name
            )
            answer = intake_pb2.UploadDatasetResponse(
                version=version_proto(recorded.dataset, recorded.row),
                report=_report(recorded.row),
                already_existed=recorded.already_existed,
            )
        crash_point("intake.upload.after_commit")  # committed, the client not answered
        return answer

    def _token_counter(self, base_model: str, context):
        """The named base model's tokenizer, asked of the registry as the caller."""
        try:
            weights = self.base_model_weights(base_model, forwarded_credentials(context))
            return self.tokenizers.counter_for(weights)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise InvalidArgument(
                    "metadata.tokenizer_base_model",
                    f"{base_model!r} is not a registered base model",
                ) from None
            raise Unavailable(
                f"registry lookup of {base_model!r} failed: {exc.details()}"
            ) from None
        except ValueError as exc:
            raise InvalidArgument("metadata.tokenizer_base_model", str(exc)) from None

    def _spec(self, meta: intake_pb2.UploadMetadata, principal: Principal) -> UploadSpec:
        check_name(meta.dataset, "metadata.dataset")
        if meta.format not in _FORMATS:
            raise InvalidArgument("metadata.format", "must be JSONL, CSV or PARQUET")
        if meta.schema not in _SCHEMAS:
            raise InvalidArgument("metadata.schema", "must be INSTRUCTION or CHAT")
        if meta.invalid_rows not in _POLICIES:
            raise InvalidArgument("metadata.invalid_rows", f"unknown policy {meta.invalid_rows}")
        if meta.parent_version:
            check_version_id(meta.parent_version, "metadata.parent_version")
        if len(meta.description) > 10_000:
            raise InvalidArgument("metadata.description", "is longer than 10000 characters")
        return UploadSpec(
            tenant=principal.tenant,
            dataset=meta.dataset,
            format=_FORMATS[meta.format],
            schema=_SCHEMAS[meta.schema],
            policy=_POLICIES[meta.invalid_rows],
            description=meta.description,
            regulated=meta.regulated,
            policy_tag=meta.policy,
            labels=dict(meta.labels),
            parent_version=meta.parent_version,
        )

    def _chunks(self, request_iterator) -> Iterator[bytes]:
        limit = self.settings.upload_chunk_limit_bytes
        for index, message in enumerate(request_iterator, start=2):
            if message.WhichOneof("part") != "chunk":
                raise InvalidArgument(
                    "metadata", f"message {index} carries metadata again; only the first may"
                )
            if len(message.chunk) > limit:
                raise InvalidArgument("chunk", f"message {index} is over {limit} bytes")
            yield message.chunk

    # ------------------------------------------------------------------ review

    def ApproveDataset(self, request, context):
        return self._review(request, approve=True)

    def RejectDataset(self, request, context):
        return self._review(request, approve=False)

    def _review(self, request, *, approve: bool):
        principal = require_role(current_principal(), "approver")
        with session_scope(self.engine) as session:
            ds, row = self.catalog.review(
                session,
                _outbox_emit(session),
                tenant=principal.tenant,
                dataset=request.dataset,
                version=request.version,
                reviewer=principal.name,
                approve=approve,
                reason=request.reason,
            )
            return version_proto(ds, row)

    # ------------------------------------------------------------------ queries

    def GetDataset(self, request, context):
        principal = require_role(current_principal(), *READ_ROLES)
        with Session(self.engine) as session:
            return self._dataset_proto(
                session, self.catalog.get_dataset(session, principal.tenant, request.dataset)
            )

    def ListDatasets(self, request, context):
        principal = require_role(current_principal(), *READ_ROLES)
        offset, limit = page_bounds(request.page)
        with Session(self.engine) as session:
            rows, total = self.catalog.list_datasets(session, principal.tenant, offset, limit)
            return intake_pb2.ListDatasetsResponse(
                datasets=[self._dataset_proto(session, ds) for ds in rows],
                page=page_response(offset, len(rows), total),
            )

    def ListVersions(self, request, context):
        principal = require_role(current_principal(), *READ_ROLES)
        offset, limit = page_bounds(request.page)
        with Session(self.engine) as session:
            ds = self.catalog.get_dataset(session, principal.tenant, request.dataset)
            rows, total = self.catalog.list_versions(session, ds, offset, limit)
            return intake_pb2.ListVersionsResponse(
                versions=[version_proto(ds, row) for row in rows],
                page=page_response(offset, len(rows), total),
            )

    def GetVersion(self, request, context):
        principal = require_role(current_principal(), *READ_ROLES)
        with Session(self.engine) as session:
            ds, row = self.catalog.get_version(
                session, principal.tenant, request.dataset, request.version
            )
            return version_proto(ds, row)

    def GetValidationReport(self, request, context):
        principal = require_role(current_principal(), *READ_ROLES)
        with Session(self.engine) as session:
            _, row = self.catalog.get_version(
                session, principal.tenant, request.dataset, request.version
            )
            return _report(row)

    def DiffVersions(self, request, context):
        principal = require_role(current_principal(), *READ_ROLES)
        if not 0 <= request.max_rows <= 1000:
            raise InvalidArgument("max_rows", "must be between 0 and 1000")
        with Session(self.engine) as session:
            _, a = self.catalog.get_version(
                session, principal.tenant, request.dataset, request.from_version
            )
            _, b = self.catalog.get_version(
                session, principal.tenant, request.dataset, request.to_version
            )
        result = self.catalog.diff_versions(a, b, request.max_rows)
        return intake_pb2.DiffVersionsResponse(
            rows_added=result.rows_added,
            rows_removed=result.rows_removed,
            added_samples=result.added_samples,
            removed_samples=result.removed_samples,
        )

    def _dataset_proto(self, session: Session, ds: DatasetRow) -> intake_pb2.Dataset:
        latest = self.catalog.latest_version(session, ds)
        msg = intake_pb2.Dataset(
            name=ds.name,
            description=ds.description,
            regulated=ds.regulated,
            latest_version=latest.version if latest else "",
            version_count=self.catalog.count_versions(session, ds),
        )
        msg.created_at.FromDatetime(ds.created_at)
        return msg


class RegistryBaseModels:
    """Base model folder refs from the registry's GetBaseModel, asked as the caller."""

    def __init__(self, target: str, timeout_s: float = 10.0):
        self.target = target
        self.timeout_s = timeout_s
        self._stub = None

    def __call__(self, name: str, credentials) -> ArtifactRef:
        if self._stub is None:
            self._stub = registry_pb2_grpc.RegistryServiceStub(make_channel(self.target))
        base = self._stub.GetBaseModel(
            registry_pb2.GetBaseModelRequest(name=name),
            metadata=list(credentials),
            timeout=self.timeout_s,
        )
        return ArtifactRef.from_proto(base.weights)


def version_proto(ds: DatasetRow, row: DatasetVersionRow) -> intake_pb2.DatasetVersion:
    msg = intake_pb2.DatasetVersion(
        dataset=ds.name,
        version=row.version,
        state=STATE_TO_PROTO[row.state],
        schema=intake_pb2.ROW_SCHEMA_INSTRUCTION
        if row.schema == str(RowSchema.INSTRUCTION)
        else intake_pb2.ROW_SCHEMA_CHAT,
        rows=row.rows,
        train_rows=row.train_rows,
        eval_rows=row.eval_rows,
        manifest=manifest_ref(row).to_proto(),
        uploaded_by=row.uploaded_by,
        approved_by=row.reviewed_by if row.state == "APPROVED" else "",
        review_reason=row.review_reason,
        source=row.source,
        parent_version=row.parent_version,
        labels=row.labels or {},
    )
    msg.created_at.FromDatetime(row.created_at)
    return msg


def _report(row: DatasetVersionRow) -> intake_pb2.ValidationReport:
    return intake_pb2.ValidationReport.FromString(row.report)


def _outbox_emit(session: Session):
    def emit(event_type: str, payload: Message, aggregate_id: str):
        return add_to_outbox(
            session, event_type, payload, producer="intake", aggregate_id=aggregate_id
        )

    return emit


def build_catalog(settings: IntakeSettings) -> DatasetCatalog:
    # No bucket check here: the service must start (and report health) while S3 is still
    # coming up; the catalog makes sure of the bucket on first use.
    store = ArtifactStore.from_settings(settings.s3)
    spool = settings.spool_dir or str(Path(settings.state_dir) / "spool")
    remove_spool_leftovers(spool)
    return DatasetCatalog(
        store, spool_dir=spool, auto_approve_unregulated=settings.auto_approve_unregulated
    )


def remove_spool_leftovers(spool_dir: str) -> None:
    """Uploads in flight when the process was killed leave their temporary folders (as
    big as the files); the spool is this process's own, so at start they are garbage."""
    for leftover in Path(spool_dir).glob("upload-*"):
        log.info("removing %s, left by an upload the last process did not finish", leftover)
        shutil.rmtree(leftover, ignore_errors=True)


def register(settings: IntakeSettings, engine: Engine) -> list[tuple[AddServicerFn, object]]:
    # The outbox table too, as every service's register does: uploads stage events there
    # even when no event runtime runs in this process.
    apply_migrations(engine, "events", EVENTS_MIGRATIONS)
    apply_migrations(engine, "intake", INTAKE_MIGRATIONS)
    return [
        (
            intake_pb2_grpc.add_IntakeServiceServicer_to_server,
            IntakeServicer(settings, engine, build_catalog(settings)),
        )
    ]


def workers(settings: IntakeSettings, engine: Engine) -> list[EventRuntime]:
    """The data.approved consumer and the outbox relay."""
    catalog = build_catalog(settings)
    return [
        EventRuntime(
            settings.kafka,
            engine,
            service_name="intake",
            handlers={
                topics.DATA_APPROVED: lambda event, ctx: handle_data_approved(catalog, event, ctx)
            },
        )
    ]
