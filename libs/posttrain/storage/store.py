"""ArtifactStore: content-addressed blobs and atomically published artifacts on S3.

Owns every read and write of datasets, checkpoints, models, adapters and reports in
object storage. It speaks only the S3 API (minio client), so the same code runs on MinIO
in production and on SeaweedFS locally. Layout: see posttrain.storage.keys.

Guarantees: a named artifact is visible whole or not at all (its blobs are stored
first, its manifest under its name last); every read is checked against the sha256 it
was stored under; a local download appears only once verified.
Must never: hold a whole file in memory, write outside its root prefix, publish a
manifest naming a blob that is not stored, or put a secret key into a message.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.error import S3Error
from minio.helpers import MAX_MULTIPART_COUNT, MAX_PART_SIZE, MIN_PART_SIZE, check_bucket_name

from posttrain.storage.errors import (
    ArtifactExists,
    ArtifactNotFound,
    ArtifactStoreError,
    BucketMissing,
    ChecksumMismatch,
    CredentialsRefused,
    EndpointUnreachable,
    SourceChanged,
)
from posttrain.storage.hashing import HashingReader, sha256_file
from posttrain.storage.keys import (
    MANIFEST_FILENAME,
    RESERVED_FIRST_SEGMENTS,
    STAGING_PREFIX,
    blob_key,
    check_artifact_name,
    check_prefix,
    check_relative_name,
    manifest_key,
)
from posttrain.storage.manifest import Manifest, ManifestEntry
from posttrain.storage.ref import BLOB_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, ArtifactRef

if TYPE_CHECKING:
    from posttrain.config import S3Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# What publish_files() accepts per file: a local file, content, a stream or chunk iterable
# (e.g. a gRPC upload), or a blob already in this store.
FileSource = os.PathLike[str] | bytes | BinaryIO | Iterable[bytes] | ArtifactRef

DEFAULT_PART_SIZE = 16 * 1024 * 1024
# Largest manifest or get_bytes() read held in memory.
DEFAULT_MAX_BYTES_IN_MEMORY = 64 * 1024 * 1024

_CREDENTIAL_ERROR_CODES = frozenset(
    {
        "AccessDenied",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "InvalidToken",
        "ExpiredToken",
        "InvalidSecurity",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"})


@dataclass(frozen=True)
class ObjectInfo:
    """One object as listed or stat'ed; `key` is relative to the store's root prefix."""

    key: str
    size_bytes: int
    last_modified: datetime | None
    etag: str | None


class ArtifactStore:
    """Artifacts in one bucket (under an optional root prefix) of an S3 endpoint.

    Blobs: put_file / put_stream / put_bytes store content under blobs/sha256/<hex> and
    return an ArtifactRef; the same content is stored once. get_bytes / iter_bytes /
    download_file read it back verified.
    Folder artifacts: put_folder / publish_files store each file as a blob, then a
    manifest; with a name, the manifest is written under `<name>/manifest.json` last, which
    is what makes the artifact visible. download_folder / get_manifest / resolve read them.
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        region: str | None = "us-east-1",
        root_prefix: str = "",
        part_size: int = DEFAULT_PART_SIZE,
        parallel_part_uploads: int = 3,
        max_parallel_files: int = 8,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 300.0,
    ) -> None:
        if "://" in endpoint:
            raise ValueError(f"endpoint={endpoint!r} must be host:port; use secure=True for https")
        try:
            check_bucket_name(bucket, strict=True)
        except ValueError as exc:
            raise ValueError(f"bucket={bucket!r} is not a valid S3 bucket name: {exc}") from None
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size={part_size} must be between 5 MiB and 5 GiB (S3 limits)")
        root = check_prefix(root_prefix, "root_prefix")
        self._root = root if root == "" or root.endswith("/") else root + "/"
        self._bucket = bucket
        self._endpoint_url = f"{'https' if secure else 'http'}://{endpoint}"
        self._access_key = access_key
        self._part_size = part_size
        self._parallel_part_uploads = parallel_part_uploads
        self._max_parallel_files = max_parallel_files
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            maxsize=max_parallel_files + parallel_part_uploads + 2,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            # minio's default policy, but only 2 connect retries: a wrong endpoint should
            # fail within a second or so, not after minutes.
            retries=urllib3.Retry(
                total=5, connect=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region or None,
            http_client=http,
        )
        self._bucket_checked = False

    @classmethod
    def from_settings(cls, settings: S3Settings, **options: Any) -> ArtifactStore:
        """A store on `settings.bucket`; options are the keyword arguments of __init__."""
        return cls(
            settings.endpoint,
            settings.access_key,
            settings.secret_key,
            settings.bucket,
            secure=settings.secure,
            region=settings.region,
            **options,
        )

    def __repr__(self) -> str:
        return f"ArtifactStore({self._endpoint_url}, bucket={self._bucket!r}, root={self._root!r})"

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def endpoint_url(self) -> str:
        return self._endpoint_url

    @property
    def root_prefix(self) -> str:
        return self._root

    @property
    def client(self) -> Minio:
        """The underlying minio client, for tools and tests; artifact code should not need it."""
        return self._client

    # ------------------------------------------------------------------ bucket

    def ensure_bucket(self) -> bool:
        """Create the bucket if it is missing; True when this call created it."""
        with self._s3_call("bucket check"):
            exists = self._client.bucket_exists(self._bucket)
        created = False
        if not exists:
            try:
                with self._s3_call("bucket creation"):
                    self._client.make_bucket(self._bucket)
                created = True
            except ArtifactStoreError as exc:
                # Another process may have created it between our check and our create.
                cause = exc.__cause__
                if not (
                    isinstance(cause, S3Error)
                    and cause.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")
                ):
                    raise
        self._bucket_checked = True
        return created

    def _require_bucket(self) -> None:
        # Checked once per store: some servers answer a missing bucket with NoSuchKey, and
        # SeaweedFS silently creates it on PUT, so the error would otherwise be misleading.
        if self._bucket_checked:
            return
        with self._s3_call("bucket check"):
            exists = self._client.bucket_exists(self._bucket)
        if not exists:
            raise self._bucket_missing(self._bucket)
        self._bucket_checked = True

    def _bucket_missing(self, bucket: str) -> BucketMissing:
        return BucketMissing(
            f"bucket {bucket!r} does not exist on S3 endpoint {self._endpoint_url}; create it "
            f"with ArtifactStore.ensure_bucket() (or `mc mb ALIAS/{bucket}`), or point "
            f"POSTTRAIN_S3_BUCKET at an existing bucket"
        )

    # ------------------------------------------------------------------ errors

    @contextmanager
    def _s3_call(
        self, action: str, key: str | None = None, bucket: str | None = None
    ) -> Iterator[None]:
        """Turn minio and network errors into ArtifactStoreErrors that say what and where."""
        bucket = bucket or self._bucket
        where = f"s3://{bucket}/{key}" if key else f"bucket {bucket!r}"
        try:
            yield
        except S3Error as exc:
            raise self._translate(exc, action, where, bucket) from exc
        except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise EndpointUnreachable(
                f"S3 endpoint {self._endpoint_url} could not be reached (or dropped the "
                f"connection) during {action} of {where}: {reason}. Is the server running, "
                f"and is POSTTRAIN_S3_ENDPOINT right?"
            ) from exc

    def _translate(self, exc: S3Error, action: str, where: str, bucket: str) -> ArtifactStoreError:
        if exc.code in _CREDENTIAL_ERROR_CODES:
            return CredentialsRefused(
                f"S3 endpoint {self._endpoint_url} refused the credentials of access key "
                f"{self._access_key!r} ({exc.code}) during {action} of {where}; check "
                f"POSTTRAIN_S3_ACCESS_KEY / POSTTRAIN_S3_SECRET_KEY and that this key may "
                f"use bucket {bucket!r}"
            )
        if exc.code == "NoSuchBucket":
            return self._bucket_missing(bucket)
        if exc.code in _NOT_FOUND_CODES:
            return ArtifactNotFound(f"no object at {where} (endpoint {self._endpoint_url})")
        return ArtifactStoreError(
            f"S3 {action} of {where} at {self._endpoint_url} failed: {exc.code}: {exc.message}"
        )

    # ------------------------------------------------------------------ keys

    def _key(self, relative: str) -> str:
        return self._root + relative

    def _uri(self, key: str) -> str:
        return f"s3://{self._bucket}/{key}"

    def _blob_ref(
        self, sha256: str, size_bytes: int, media_type: str = BLOB_MEDIA_TYPE
    ) -> ArtifactRef:
        return ArtifactRef(self._uri(self._key(blob_key(sha256))), sha256, size_bytes, media_type)

    def _stat_or_none(self, key: str, bucket: str | None = None) -> Any:
        try:
            with self._s3_call("stat", key, bucket):
                return self._client.stat_object(bucket or self._bucket, key)
        except ArtifactNotFound:
            return None

    def _blob_present(self, key: str, size_bytes: int) -> bool:
        found = self._stat_or_none(key)
        if found is not None and found.size != size_bytes:
            # Only corruption gives a content address a different size: store it again.
            log.warning("blob %s has %s bytes, expected %s: rewriting", key, found.size, size_bytes)
            return False
        return found is not None

    def _remove_quietly(self, key: str) -> None:
        try:
            with self._s3_call("removal", key):
                self._client.remove_object(self._bucket, key)
        except ArtifactStoreError as exc:
            log.warning("could not remove %s (clean_staging() removes leftovers): %s", key, exc)

    # ------------------------------------------------------------------ blobs: write

    def _part_size_for(self, length: int) -> int:
        if length < 0:
            return self._part_size
        # S3 allows at most 10,000 parts: very large objects need larger parts.
        needed = -(-length // MAX_MULTIPART_COUNT)
        return max(self._part_size, -(-needed // MIN_PART_SIZE) * MIN_PART_SIZE)

    def _upload(self, key: str, reader: HashingReader, length: int, content_type: str) -> None:
        try:
            with self._s3_call("upload", key):
                self._client.put_object(
                    self._bucket,
                    key,
                    reader,
                    length,
                    content_type=content_type,
                    part_size=self._part_size_for(length),
                    num_parallel_uploads=self._parallel_part_uploads,
                )
        except ArtifactStoreError as exc:
            # A failure of the caller's stream is the caller's error, not the server's.
            if reader.source_error is not None and exc.__cause__ is reader.source_error:
                raise reader.source_error from None
            raise

    def put_file(
        self, path: str | os.PathLike[str], *, content_type: str = BLOB_MEDIA_TYPE
    ) -> ArtifactRef:
        """Store a local file under its content address.

        A local file can be read twice cheaply, so it is hashed first: if that content is
        already stored, nothing is uploaded. Otherwise it is uploaded straight to its final
        key, which S3 shows only once the (multipart) upload completes, so no staging copy
        is needed. The bytes are hashed again on the way up to catch a file changing meanwhile.
        """
        self._require_bucket()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path={str(path)!r} is not a file")
        sha256, size = sha256_file(path)
        ref = self._blob_ref(sha256, size)
        if self._blob_present(ref.key, size):
            return ref
        with open(path, "rb") as f:
            reader = HashingReader(f)
            self._upload(ref.key, reader, size, content_type)
        if reader.sha256 != sha256 or reader.bytes_read != size:
            self._remove_quietly(ref.key)
            raise SourceChanged(
                f"{path} changed while it was uploaded (sha256 {sha256} when hashed, "
                f"{reader.sha256} when sent); nothing was stored"
            )
        return ref

    def put_bytes(self, data: bytes, *, content_type: str = BLOB_MEDIA_TYPE) -> ArtifactRef:
        """Store small content held in memory (a manifest, a JSON report)."""
        self._require_bucket()
        data = bytes(data)
        ref = self._blob_ref(hashlib.sha256(data).hexdigest(), len(data))
        if not self._blob_present(ref.key, len(data)):
            self._upload(ref.key, HashingReader(io.BytesIO(data)), len(data), content_type)
        return ref

    def put_stream(
        self,
        source: BinaryIO | Iterable[bytes],
        *,
        length: int = -1,
        content_type: str = BLOB_MEDIA_TYPE,
    ) -> ArtifactRef:
        """Store a stream (a file object or an iterable of bytes chunks) of any length.

        A stream that ends within one part is held anyway, so it is hashed and stored like
        put_bytes. A longer one's hash is known only once it has been read: it is uploaded
        to a unique staging key while being hashed, then copied server-side to its content
        address (skipped if that content is already stored) and the staging object removed.
        The copy costs the server a rewrite (measured about a third of the upload time on
        SeaweedFS) but keeps the client to one pass over the data with bounded memory. If the
        stream raises, the upload is aborted and nothing is stored; a process killed between
        upload and copy leaves only a staging object, which clean_staging() removes.
        For a local file use put_file: it hashes first and needs no copy.
        """
        self._require_bucket()
        reader = HashingReader(source)
        head = reader.read(self._part_size + 1)
        if len(head) <= self._part_size:
            if length >= 0 and len(head) != length:
                raise ValueError(f"length={length}, but the stream held {len(head)} bytes")
            return self.put_bytes(head, content_type=content_type)

        def whole_stream() -> Iterator[bytes]:
            yield head
            while chunk := reader.read(self._part_size):
                yield chunk

        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        staging_key = self._key(f"{STAGING_PREFIX}{stamp}-{uuid.uuid4().hex}")
        upload = HashingReader(whole_stream())
        try:
            self._upload(staging_key, upload, length, content_type)
            ref = self._blob_ref(upload.sha256, upload.bytes_read)
            if not self._blob_present(ref.key, ref.size_bytes):
                with self._s3_call("copy into place", ref.key):
                    self._client.copy_object(
                        self._bucket, ref.key, CopySource(self._bucket, staging_key)
                    )
        finally:
            self._remove_quietly(staging_key)
        return ref

    # ------------------------------------------------------------------ blobs: read

    def iter_bytes(self, ref: ArtifactRef, *, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """Stream the content at `ref`, verified against ref.sha256 and ref.size_bytes.

        The check completes as the stream ends: ChecksumMismatch is raised after the last
        chunk (or as soon as more bytes arrive than expected), so don't act on the data
        before the iteration has finished; get_bytes and download_file do that for you.
        """
        bucket, key = ref.bucket, ref.key
        if bucket == self._bucket:
            self._require_bucket()
        digest = hashlib.sha256()
        received = 0
        with self._s3_call("download", key, bucket):
            response = self._client.get_object(bucket, key)
            try:
                for chunk in response.stream(chunk_size):
                    received += len(chunk)
                    if received > ref.size_bytes:
                        raise ChecksumMismatch(ref.uri, ref.sha256, None, ref.size_bytes, received)
                    digest.update(chunk)
                    yield chunk
            finally:
                response.close()
                response.release_conn()
        actual = digest.hexdigest()
        if actual != ref.sha256 or received != ref.size_bytes:
            raise ChecksumMismatch(ref.uri, ref.sha256, actual, ref.size_bytes, received)

    def get_bytes(self, ref: ArtifactRef, *, max_bytes: int = DEFAULT_MAX_BYTES_IN_MEMORY) -> bytes:
        """The verified content at `ref`, in memory; for small objects (JSON, manifests)."""
        if ref.size_bytes > max_bytes:
            raise ValueError(
                f"{ref.uri} is {ref.size_bytes} bytes, over max_bytes={max_bytes}; "
                f"use download_file() or iter_bytes()"
            )
        return b"".join(self.iter_bytes(ref))

    def download_file(self, ref: ArtifactRef, dest: str | os.PathLike[str]) -> Path:
        """Download `ref` to `dest`: written to a temporary file beside it, verified, then
        renamed, so `dest` only ever holds whole, verified content."""
        dest = Path(dest)
        if dest.is_dir():
            raise IsADirectoryError(f"dest={str(dest)!r} is a folder; give a file path")
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial_path = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            with open(partial_path, "wb") as f:
                for chunk in self.iter_bytes(ref):
                    f.write(chunk)
            os.replace(partial_path, dest)
        except BaseException:
            partial_path.unlink(missing_ok=True)
            raise
        return dest

    def presigned_get_url(self, ref: ArtifactRef, expires: timedelta = timedelta(hours=1)) -> str:
        """A URL anyone can GET `ref` with until it expires (no verification on their side)."""
        with self._s3_call("presigning", ref.key, ref.bucket):
            return self._client.presigned_get_object(ref.bucket, ref.key, expires=expires)

    # ------------------------------------------------------------------ folder artifacts

    def put_folder(
        self,
        source_dir: str | os.PathLike[str],
        name: str | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
        overwrite: bool = False,
    ) -> ArtifactRef:
        """Store every file under `source_dir` (e.g. a Hugging Face model folder or a PEFT
        adapter) and its manifest; see publish_files. Symlinks to files are followed (a HF
        cache snapshot is made of them); a symlink to a folder is refused."""
        root = Path(source_dir)
        if not root.is_dir():
            raise NotADirectoryError(f"source_dir={str(root)!r} is not a folder")
        return self.publish_files(
            _files_of_folder(root), name, metadata=metadata, overwrite=overwrite
        )

    def publish_files(
        self,
        files: Mapping[str, FileSource],
        name: str | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
        overwrite: bool = False,
    ) -> ArtifactRef:
        """Store files as one artifact: {relative path: Path | bytes | stream | ArtifactRef}.

        Every file is stored as a blob first, then the manifest; with `name`, the manifest
        is written last under `<name>/manifest.json`, and that single PUT is what makes the
        artifact visible: if anything fails before it, no artifact exists under the name.
        Publishing the same content under the same name again is a no-op; different content
        under a published name raises ArtifactExists unless overwrite=True (its blobs are
        stored by then: harmless, and the next attempt won't upload them again).
        Returns the manifest's ref: its sha256 is the artifact id.
        """
        if name is not None:
            check_artifact_name(name)
        for path in files:
            check_relative_name(path, "file path")
        # Checks the folder's shape (e.g. 'a' both a file and a folder) before any upload.
        Manifest(ManifestEntry(path, "0" * 64, 0) for path in files)
        self._require_bucket()
        jobs = [
            (_size_if_known(source), partial(self._put_source, source)) for source in files.values()
        ]
        refs = self._run_jobs(jobs)
        manifest = Manifest(
            (
                ManifestEntry(path, ref.sha256, ref.size_bytes)
                for path, ref in zip(files, refs, strict=True)
            ),
            metadata,
        )
        return self._publish_manifest(manifest, name, overwrite)

    def publish(
        self, name: str, artifact: ArtifactRef | Manifest, *, overwrite: bool = False
    ) -> ArtifactRef:
        """Publish an existing artifact (its manifest's ref, or a Manifest) under `name`,
        e.g. an alias 'models/support-bot/production' with overwrite=True. Every blob the
        manifest lists must already be stored here, or ArtifactNotFound is raised."""
        check_artifact_name(name)
        manifest = artifact if isinstance(artifact, Manifest) else self.get_manifest(artifact)
        self._require_bucket()

        def check_blob(entry: ManifestEntry) -> None:
            if not self._blob_present(self._key(blob_key(entry.sha256)), entry.size_bytes):
                raise ArtifactNotFound(
                    f"cannot publish {name!r}: blob {entry.sha256} of {entry.path!r} is not "
                    f"stored in s3://{self._bucket}/{self._root}"
                )

        self._run_jobs([(0, partial(check_blob, entry)) for entry in manifest.files])
        return self._publish_manifest(manifest, name, overwrite)

    def _put_source(self, source: FileSource) -> ArtifactRef:
        if isinstance(source, ArtifactRef):
            expected = self._blob_ref(source.sha256, source.size_bytes)
            if source.uri != expected.uri:
                raise ValueError(f"{source.uri} is not a blob of this store ({expected.uri})")
            if not self._blob_present(source.key, source.size_bytes):
                raise ArtifactNotFound(f"no blob at {source.uri}")
            return source
        if isinstance(source, os.PathLike):
            return self.put_file(source)
        if isinstance(source, bytes | bytearray | memoryview):
            return self.put_bytes(bytes(source))
        if isinstance(source, str):
            raise TypeError("a file source given as str is ambiguous: pass a Path or bytes")
        return self.put_stream(source)

    def _publish_manifest(
        self, manifest: Manifest, name: str | None, overwrite: bool
    ) -> ArtifactRef:
        data = manifest.to_json_bytes()
        # Also stored by content address: the artifact id resolves with or without a name.
        ref = replace(
            self.put_bytes(data, content_type=MANIFEST_MEDIA_TYPE), media_type=MANIFEST_MEDIA_TYPE
        )
        if name is None:
            return ref
        key = self._key(manifest_key(name))
        named = ArtifactRef(self._uri(key), ref.sha256, ref.size_bytes, MANIFEST_MEDIA_TYPE)
        current = self._read_small_object_or_none(key)
        if current is not None:
            current_sha256 = hashlib.sha256(current).hexdigest()
            if current_sha256 == ref.sha256:
                return named
            if not overwrite:
                raise ArtifactExists(
                    f"artifact {name!r} is already published in s3://{self._bucket}/{key} with "
                    f"manifest sha256 {current_sha256} (this one: {ref.sha256}); published "
                    f"versions are immutable: use a new name, or overwrite=True for an alias"
                )
        # The commit point: one PUT, after every blob the manifest lists is stored.
        with self._s3_call("publish", key):
            self._client.put_object(
                self._bucket, key, io.BytesIO(data), len(data), content_type=MANIFEST_MEDIA_TYPE
            )
        log.info("published %s (%s, %d files)", named.uri, ref.sha256, len(manifest.files))
        return named

    def _read_small_object_or_none(self, key: str) -> bytes | None:
        try:
            with self._s3_call("download", key):
                response = self._client.get_object(self._bucket, key)
                try:
                    data = response.read(DEFAULT_MAX_BYTES_IN_MEMORY + 1)
                finally:
                    response.close()
                    response.release_conn()
        except ArtifactNotFound:
            return None
        if len(data) > DEFAULT_MAX_BYTES_IN_MEMORY:
            raise ArtifactStoreError(f"s3://{self._bucket}/{key} is too large to be a manifest")
        return data

    def resolve(self, name: str) -> ArtifactRef:
        """The ref (manifest sha256 = artifact id) of the artifact published as `name`."""
        return self._read_named_manifest(name)[0]

    def file_ref(self, entry: ManifestEntry) -> ArtifactRef:
        """The blob of one file of a folder artifact, for iter_bytes/get_bytes."""
        return self._blob_ref(entry.sha256, entry.size_bytes)

    def get_manifest(self, artifact: ArtifactRef | str) -> Manifest:
        """The manifest of an artifact given by ref (verified) or by published name."""
        if isinstance(artifact, ArtifactRef):
            ref, data = artifact, self.get_bytes(artifact)
        else:
            ref, data = self._read_named_manifest(artifact)
        return Manifest.from_json_bytes(data, ref.uri)

    def _read_named_manifest(self, name: str) -> tuple[ArtifactRef, bytes]:
        key = self._key(manifest_key(name))
        self._require_bucket()
        data = self._read_small_object_or_none(key)
        if data is None:
            raise ArtifactNotFound(
                f"no artifact named {name!r} (no s3://{self._bucket}/{key} on {self._endpoint_url})"
            )
        sha256 = hashlib.sha256(data).hexdigest()
        return ArtifactRef(self._uri(key), sha256, len(data), MANIFEST_MEDIA_TYPE), data

    def download_folder(
        self, artifact: ArtifactRef | str, dest_dir: str | os.PathLike[str]
    ) -> Path:
        """Download a folder artifact (by ref or name) into `dest_dir`, which must not exist
        or be empty. Files are verified one by one into a hidden folder beside it, which is
        renamed to `dest_dir` at the end: `dest_dir` appears whole and verified, or not at all."""
        dest = Path(dest_dir)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise FileExistsError(f"dest_dir={str(dest)!r} exists and is not an empty folder")
        manifest = self.get_manifest(artifact)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial_dir = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.partial")
        partial_dir.mkdir()
        try:
            jobs = []
            for entry in manifest.files:
                target = partial_dir / entry.path  # entry paths were checked: no '..', no '/'
                target.parent.mkdir(parents=True, exist_ok=True)
                ref = self._blob_ref(entry.sha256, entry.size_bytes)
                jobs.append((entry.size_bytes, partial(self.download_file, ref, target)))
            self._run_jobs(jobs)
            os.rename(partial_dir, dest)  # replaces an empty dest folder atomically on POSIX
        except BaseException:
            shutil.rmtree(partial_dir, ignore_errors=True)
            raise
        return dest

    # ------------------------------------------------------------------ listing and upkeep

    def exists(self, artifact: ArtifactRef | str) -> bool:
        """Whether an object is at the ref, or an artifact is published under the name."""
        self._require_bucket()
        if isinstance(artifact, ArtifactRef):
            return self._stat_or_none(artifact.key, artifact.bucket) is not None
        return self._stat_or_none(self._key(manifest_key(artifact))) is not None

    def stat(self, artifact: ArtifactRef | str) -> ObjectInfo:
        """Size and time of the object at the ref, or of the named artifact's manifest."""
        self._require_bucket()
        if isinstance(artifact, ArtifactRef):
            bucket, key = artifact.bucket, artifact.key
        else:
            bucket, key = self._bucket, self._key(manifest_key(artifact))
        with self._s3_call("stat", key, bucket):
            found = self._client.stat_object(bucket, key)
        return ObjectInfo(key.removeprefix(self._root), found.size, found.last_modified, found.etag)

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key (relative to the root prefix) starts with `prefix`."""
        check_prefix(prefix, "prefix")
        self._require_bucket()
        with self._s3_call("listing", prefix or "(all)"):
            for obj in self._client.list_objects(
                self._bucket, prefix=self._key(prefix), recursive=True
            ):
                yield ObjectInfo(
                    obj.object_name.removeprefix(self._root),
                    obj.size,
                    obj.last_modified,
                    obj.etag,
                )

    def list_artifacts(self, prefix: str = "") -> Iterator[str]:
        """Names of the published artifacts whose name starts with `prefix`."""
        suffix = "/" + MANIFEST_FILENAME
        for obj in self.list_objects(prefix):
            if obj.key.endswith(suffix) and obj.key.split("/", 1)[0] not in RESERVED_FIRST_SEGMENTS:
                yield obj.key.removesuffix(suffix)

    def delete(self, name: str) -> None:
        """Unpublish `name`. Its blobs stay: other artifacts may share them."""
        key = self._key(manifest_key(name))
        self._require_bucket()
        with self._s3_call("removal", key):
            self._client.remove_object(self._bucket, key)

    def clean_staging(self, older_than_hours: float = 24.0) -> int:
        """Remove staging objects older than this (left by killed uploads); returns how many.
        Keep the age above the longest upload: a younger one may still be in use.
        (Incomplete multipart uploads are invisible; MinIO expires them by itself.)"""
        cutoff = datetime.now(UTC) - timedelta(hours=older_than_hours)
        removed = 0
        for obj in self.list_objects(STAGING_PREFIX):
            if obj.last_modified is not None and obj.last_modified <= cutoff:
                with self._s3_call("removal", self._key(obj.key)):
                    self._client.remove_object(self._bucket, self._key(obj.key))
                removed += 1
        return removed

    # ------------------------------------------------------------------ concurrency

    def _run_jobs(self, jobs: Sequence[tuple[int | None, Callable[[], T]]]) -> list[T]:
        """Run (size, job) pairs; return results in order. Small jobs run concurrently (a
        model folder has many small files, each a round trip); large or unknown-size ones
        run one at a time here, as each already sends its parts in parallel and running
        several would multiply the memory held in part buffers."""
        small = [
            i for i, (size, _) in enumerate(jobs) if size is not None and size <= self._part_size
        ]
        results: list[Any] = [None] * len(jobs)
        if len(small) <= 1 or self._max_parallel_files <= 1:
            return [job() for _, job in jobs]
        small_set = set(small)
        workers = min(self._max_parallel_files, len(small))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="artifact-store") as pool:
            futures = {i: pool.submit(jobs[i][1]) for i in small}
            try:
                for i, (_, job) in enumerate(jobs):
                    if i not in small_set:
                        results[i] = job()
                for i, future in futures.items():
                    results[i] = future.result()
            except BaseException:
                for future in futures.values():
                    future.cancel()
                raise
        return results


def _size_if_known(source: FileSource) -> int | None:
    if isinstance(source, ArtifactRef):
        return 0  # only a stat: cheap
    if isinstance(source, bytes | bytearray | memoryview):
        return len(source)
    if isinstance(source, os.PathLike):
        try:
            return os.stat(source).st_size
        except OSError:
            return None
    return None


def _files_of_folder(root: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for dirname in dirnames:
            if (here / dirname).is_symlink():
                raise ValueError(
                    f"{here / dirname} is a symlink to a folder; copy or resolve it first "
                    f"(it could point outside source_dir)"
                )
        for filename in filenames:
            path = here / filename
            if not path.is_file():  # follows symlinks to files
                raise ValueError(f"{path} is not a regular file (broken link, socket or FIFO)")
            files[path.relative_to(root).as_posix()] = path
    return files
