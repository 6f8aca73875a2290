"""Base models: Hugging Face model folders already in the artifact store, recorded by the
sha256 of their manifest so that a version can say exactly which weights it builds on.

inspect_folder reads the manifest and config.json (and the safetensors headers, to count
parameters) from the store; register records the result. They are separate so that no
S3 round trip happens inside a database transaction.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from posttrain.db import utcnow
from posttrain.registry import audit, lineage, names
from posttrain.registry.errors import BaseModelExists
from posttrain.registry.tables import BaseModelRow
from posttrain.rpc.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from posttrain.storage import (
    MANIFEST_MEDIA_TYPE,
    ArtifactNotFound,
    ArtifactRef,
    ArtifactStore,
    ArtifactStoreError,
    BucketMissing,
    ChecksumMismatch,
    CredentialsRefused,
    EndpointUnreachable,
    Manifest,
    ManifestEntry,
    ManifestInvalid,
    parse_s3_uri,
)
from posttrain.storage.keys import BLOB_PREFIX, MANIFEST_FILENAME, blob_key

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 1024 * 1024
MAX_SAFETENSORS_HEADER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class BaseModelFolder:
    """What the store says about a model folder."""

    weights: ArtifactRef  # the manifest; its sha256 is the folder's id
    architecture: str
    parameters: int  # 0 when there are no safetensors headers to count from
    total_size_bytes: int
    config: dict[str, Any]


def inspect_folder(store: ArtifactStore, source_uri: str) -> BaseModelFolder:
    """Reads the folder artifact at `source_uri` (its manifest: a published name's
    s3://bucket/<name>/manifest.json or a content address s3://bucket/blobs/sha256/<hex>)."""
    try:
        ref, manifest = _read_manifest(store, source_uri)
        entries = {e.path: e for e in manifest.files}
        if CONFIG_FILE not in entries:
            raise InvalidArgument(
                "source_uri",
                f"{source_uri} has no {CONFIG_FILE}: not a Hugging Face model folder",
            )
        config = _read_config(store, entries[CONFIG_FILE], source_uri)
        parameters = _count_parameters(store, manifest.files)
    except ArtifactNotFound as exc:
        raise FailedPrecondition(
            f"source_uri {source_uri} does not exist in the artifact store: upload the folder "
            f"first (ArtifactStore.put_folder, or `posttrain models import-base` does both): {exc}"
        ) from exc
    except (ChecksumMismatch, ManifestInvalid) as exc:
        raise FailedPrecondition(
            f"source_uri {source_uri} is not a readable artifact: {exc}"
        ) from exc
    except (EndpointUnreachable, CredentialsRefused, BucketMissing) as exc:
        raise Unavailable(f"the artifact store is not usable: {exc}") from exc
    except ArtifactStoreError as exc:
        raise Unavailable(f"reading {source_uri} failed: {exc}") from exc
    architectures = config.get("architectures") or []
    architecture = (
        architectures[0] if architectures and isinstance(architectures[0], str) else ""
    ) or str(config.get("model_type") or "")
    return BaseModelFolder(
        weights=ref,
        architecture=architecture,
        parameters=parameters,
        total_size_bytes=manifest.total_size_bytes,
        config=config,
    )


def register(
    session: Session,
    *,
    name: str,
    folder: BaseModelFolder,
    actor: str,
    architecture: str = "",
    chat_template_revision: str = "",
) -> tuple[BaseModelRow, bool]:
    """Record a base model; (row, created). The same weights under the same name again is
    a no-op; other weights under a registered name are refused (BaseModelExists)."""
    names.check(names.BASE_MODEL_NAME, name, "name", "base model name")
    existing = session.get(BaseModelRow, name)
    if existing is not None:
        if existing.weights_sha256 != folder.weights.sha256:
            raise BaseModelExists(name, existing.weights_sha256, folder.weights.sha256)
        return existing, False
    row = BaseModelRow(
        name=name,
        architecture=architecture or folder.architecture,
        parameters=folder.parameters,
        weights=_ref_dict(folder.weights),
        weights_sha256=folder.weights.sha256,
        total_size_bytes=folder.total_size_bytes,
        chat_template_revision=chat_template_revision,
        config=folder.config,
        registered_by=actor,
        created_at=utcnow(),
    )
    session.add(row)
    node = lineage.ensure_node(
        session,
        names.BASE_MODEL,
        name,
        attributes={"sha256": folder.weights.sha256, "architecture": row.architecture},
    )
    audit.record(
        session,
        actor=actor,
        action="base_model.registered",
        subject=node,
        tenant=None,
        details={
            "weights": folder.weights.uri,
            "sha256": folder.weights.sha256,
            "architecture": row.architecture,
            "parameters": row.parameters,
        },
    )
    return row, True


def get(session: Session, name: str) -> BaseModelRow:
    if not name:
        raise InvalidArgument("name", "a base model name is required")
    row = session.get(BaseModelRow, name)
    if row is None:
        raise NotFound("base model", name)
    return row


def list_all(session: Session, *, offset: int, limit: int) -> tuple[Sequence[BaseModelRow], int]:
    total = session.scalar(sa.select(sa.func.count()).select_from(BaseModelRow)) or 0
    rows = session.scalars(
        sa.select(BaseModelRow).order_by(BaseModelRow.name).offset(offset).limit(limit)
    ).all()
    return rows, total


def weights_ref(row: BaseModelRow) -> ArtifactRef:
    return ArtifactRef(**row.weights)


# ------------------------------------------------------------------ reading the store


def _read_manifest(store: ArtifactStore, source_uri: str) -> tuple[ArtifactRef, Manifest]:
    if not source_uri:
        raise InvalidArgument("source_uri", "the s3:// URI of the uploaded folder is required")
    try:
        bucket, key = parse_s3_uri(source_uri)
    except ValueError as exc:
        raise InvalidArgument("source_uri", str(exc)) from None
    if bucket != store.bucket or not key.startswith(store.root_prefix):
        raise InvalidArgument(
            "source_uri",
            f"{source_uri} is outside the artifact store (s3://{store.bucket}/{store.root_prefix})",
        )
    relative = key.removeprefix(store.root_prefix)
    if relative.startswith(BLOB_PREFIX):
        sha256 = relative.removeprefix(BLOB_PREFIX)
        try:
            probe = ArtifactRef(source_uri, sha256, 0, MANIFEST_MEDIA_TYPE)
        except ValueError as exc:
            raise InvalidArgument("source_uri", str(exc)) from None
        size = store.stat(probe).size_bytes
        ref = ArtifactRef(source_uri, sha256, size, MANIFEST_MEDIA_TYPE)
    else:
        ref = store.resolve(relative.removesuffix("/" + MANIFEST_FILENAME))
    return ref, store.get_manifest(ref)


def _blob(store: ArtifactStore, entry: ManifestEntry) -> ArtifactRef:
    uri = f"s3://{store.bucket}/{store.root_prefix}{blob_key(entry.sha256)}"
    return ArtifactRef(uri, entry.sha256, entry.size_bytes)


def _read_config(store: ArtifactStore, entry: ManifestEntry, source_uri: str) -> dict[str, Any]:
    if entry.size_bytes > MAX_CONFIG_BYTES:
        raise InvalidArgument("source_uri", f"{CONFIG_FILE} of {source_uri} is over 1 MiB")
    try:
        config = json.loads(store.get_bytes(_blob(store, entry)))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(
            "source_uri", f"{CONFIG_FILE} of {source_uri} is not JSON: {exc}"
        ) from None
    if not isinstance(config, dict):
        raise InvalidArgument("source_uri", f"{CONFIG_FILE} of {source_uri} is not a JSON object")
    return config


def _count_parameters(store: ArtifactStore, files: Sequence[ManifestEntry]) -> int:
    """Sum of tensor sizes from each *.safetensors header (a few KB read per file)."""
    total = 0
    for entry in files:
        if entry.path.endswith(".safetensors"):
            header = _safetensors_header(store, entry)
            if header is None:
                return 0
            total += sum(
                math.prod(t.get("shape", []))
                for k, t in header.items()
                if k != "__metadata__" and isinstance(t, dict)
            )
    return total


def _safetensors_header(store: ArtifactStore, entry: ManifestEntry) -> dict[str, Any] | None:
    stream = store.iter_bytes(_blob(store, entry), chunk_size=64 * 1024)
    buffer = bytearray()
    needed = 8
    try:
        for chunk in stream:
            buffer += chunk
            if len(buffer) >= 8 and needed == 8:
                needed = 8 + int.from_bytes(buffer[:8], "little")
                if needed > MAX_SAFETENSORS_HEADER_BYTES:
                    break
            if len(buffer) >= needed > 8:
                break
    finally:
        stream.close()  # stops the download: only the header is wanted
    if needed <= 8 or len(buffer) < needed:
        log.warning("%s: no readable safetensors header; parameters not counted", entry.path)
        return None
    try:
        header = json.loads(buffer[8:needed])
    except (UnicodeDecodeError, json.JSONDecodeError):
        log.warning("%s: safetensors header is not JSON; parameters not counted", entry.path)
        return None
    return header if isinstance(header, dict) else None


def _ref_dict(ref: ArtifactRef) -> dict[str, Any]:
    return {
        "uri": ref.uri,
        "sha256": ref.sha256,
        "size_bytes": ref.size_bytes,
        "media_type": ref.media_type,
    }
