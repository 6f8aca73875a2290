"""ArtifactStore against a real S3 server (SeaweedFS locally, MinIO with Docker)."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio
from minio.commonconfig import CopySource

from posttrain.config import S3Settings
from posttrain.storage import (
    ArtifactExists,
    ArtifactNotFound,
    ArtifactRef,
    ArtifactStore,
    BucketMissing,
    ChecksumMismatch,
    CredentialsRefused,
    EndpointUnreachable,
    Manifest,
    ManifestEntry,
    ManifestInvalid,
    SourceChanged,
)
from posttrain.storage.hashing import sha256_file

MiB = 1024 * 1024


def blob_keys(store: ArtifactStore) -> list[str]:
    return [obj.key for obj in store.list_objects("blobs/")]


def staging_keys(store: ArtifactStore) -> list[str]:
    return [obj.key for obj in store.list_objects("staging/")]


def make_folder(root: Path) -> Path:
    """A small stand-in for a Hugging Face model folder."""
    (root / "tokenizer").mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "llama", "hidden_size": 64}')
    (root / "model.safetensors").write_bytes(os.urandom(300_000))
    (root / "tokenizer" / "tokenizer.json").write_text('{"version": "1.0"}')
    (root / "tokenizer" / "special_tokens_map.json").write_text("{}")
    (root / "empty.txt").write_bytes(b"")
    return root


def folder_contents(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


class RaisingStream:
    """Yields `fail_after` bytes, then raises: an upload interrupted midway."""

    def __init__(self, fail_after: int) -> None:
        self.remaining = fail_after

    def read(self, size: int = -1) -> bytes:
        if self.remaining <= 0:
            raise ConnectionAbortedError("client went away mid-upload")
        n = min(size, self.remaining, MiB)
        self.remaining -= n
        return os.urandom(n)


# ---------------------------------------------------------------- blobs


def test_bytes_stream_and_file_round_trip_verified(store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(70_000)
    ref = store.put_bytes(data)
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert ref.size_bytes == len(data)
    assert ref.uri == f"s3://{store.bucket}/blobs/sha256/{ref.sha256}"
    assert store.get_bytes(ref) == data
    assert b"".join(store.iter_bytes(ref, chunk_size=4096)) == data

    dest = store.download_file(ref, tmp_path / "out" / "blob.bin")
    assert dest.read_bytes() == data
    assert sorted(p.name for p in dest.parent.iterdir()) == ["blob.bin"]  # no temp file left
    assert store.exists(ref)
    assert store.stat(ref).size_bytes == len(data)
    assert staging_keys(store) == []


def test_same_content_twice_gets_one_address_and_is_stored_once(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(50_000)
    local = tmp_path / "data.bin"
    local.write_bytes(data)

    first = store.put_file(local)
    from_stream = store.put_stream(io.BytesIO(data))
    from_chunks = store.put_stream(iter([data[:10], data[10:]]))

    # Known content already stored: no upload at all the second time.
    def no_upload(*args: object, **kwargs: object) -> None:
        raise AssertionError("content already stored must not be uploaded again")

    monkeypatch.setattr(store, "_upload", no_upload)
    again_file = store.put_file(local)
    again_bytes = store.put_bytes(data)

    assert first == from_stream == from_chunks == again_file == again_bytes
    assert blob_keys(store) == [f"blobs/sha256/{first.sha256}"]
    assert staging_keys(store) == []


def test_long_streams_with_the_same_content_are_stored_once(
    s3_settings: S3Settings, store: ArtifactStore
) -> None:
    # Longer than one part: these go through a staging upload and a server-side copy.
    small_parts = ArtifactStore.from_settings(s3_settings, part_size=5 * MiB)
    data = os.urandom(6 * MiB)
    first = small_parts.put_stream(io.BytesIO(data))
    second = small_parts.put_stream(iter([data[: 3 * MiB], data[3 * MiB :]]), length=len(data))
    assert first == second
    assert first.sha256 == hashlib.sha256(data).hexdigest()
    assert blob_keys(store) == [f"blobs/sha256/{first.sha256}"]
    assert staging_keys(store) == []
    assert store.get_bytes(first) == data


def test_corrupted_blob_is_detected_on_read(
    store: ArtifactStore, raw_client: Minio, tmp_path: Path
) -> None:
    data = b'{"accuracy": 0.93}'
    ref = store.put_bytes(data)
    tampered = b'{"accuracy": 0.99}'  # same size, other content
    raw_client.put_object(store.bucket, ref.key, io.BytesIO(tampered), len(tampered))

    with pytest.raises(ChecksumMismatch) as caught:
        store.get_bytes(ref)
    message = str(caught.value)
    assert ref.uri in message
    assert ref.sha256 in message
    assert hashlib.sha256(tampered).hexdigest() in message
    assert caught.value.actual_sha256 == hashlib.sha256(tampered).hexdigest()

    dest = tmp_path / "report.json"
    with pytest.raises(ChecksumMismatch):
        store.download_file(ref, dest)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temp file

    longer = tampered * 3  # a longer object fails as soon as it overruns the ref's size
    raw_client.put_object(store.bucket, ref.key, io.BytesIO(longer), len(longer))
    with pytest.raises(ChecksumMismatch, match=f"got more than {len(data)} bytes"):
        store.get_bytes(ref)

    # Writing the same content again repairs a blob whose size shows it is corrupt.
    assert store.put_bytes(data) == ref
    assert store.get_bytes(ref) == data


def test_interrupted_stream_leaves_no_blob_and_no_artifact(
    s3_settings: S3Settings, store: ArtifactStore
) -> None:
    # Small parts, so the failure comes after a multipart upload has started.
    small_parts = ArtifactStore.from_settings(s3_settings, part_size=5 * MiB)
    with pytest.raises(ConnectionAbortedError):
        small_parts.put_stream(RaisingStream(fail_after=12 * MiB))
    assert blob_keys(store) == []
    assert staging_keys(store) == []

    name = "datasets/support-chats/1"
    with pytest.raises(ConnectionAbortedError):
        small_parts.publish_files(
            {"schema.json": b'{"fields": []}', "rows.jsonl": RaisingStream(fail_after=12 * MiB)},
            name=name,
        )
    assert not store.exists(name)
    assert list(store.list_artifacts()) == []
    with pytest.raises(ArtifactNotFound, match="datasets/support-chats/1"):
        store.resolve(name)
    assert staging_keys(store) == []


CHILD_UPLOAD = textwrap.dedent(
    """
    import sys, time
    from posttrain.storage import ArtifactStore

    endpoint, access_key, secret_key, bucket = sys.argv[1:5]
    store = ArtifactStore(endpoint, access_key, secret_key, bucket, part_size=5 * 2**20)

    def endless_rows():
        chunk = b'{"instruction": "x", "response": "y"}\\n' * 30_000
        for n in range(10**6):
            yield chunk
            if n == 12:
                print("midway", flush=True)
            if n > 12:
                time.sleep(0.05)

    store.publish_files({"schema.json": b"{}", "rows.jsonl": endless_rows()}, name="datasets/killed/1")
    """
)


def test_killed_upload_leaves_no_visible_artifact(
    s3_settings: S3Settings, store: ArtifactStore
) -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD_UPLOAD,
            s3_settings.endpoint,
            s3_settings.access_key,
            s3_settings.secret_key,
            s3_settings.bucket,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "midway"
    finally:
        child.kill()
        child.wait(timeout=10)
    assert not store.exists("datasets/killed/1")
    assert list(store.list_artifacts()) == []
    # The name is free for a complete upload later.
    ref = store.publish_files({"rows.jsonl": b"{}\n"}, name="datasets/killed/1")
    assert store.resolve("datasets/killed/1") == ref


def test_clean_staging_removes_only_stale_leftovers(
    store: ArtifactStore, raw_client: Minio
) -> None:
    # What a process killed between its staging upload and the copy leaves behind.
    raw_client.put_object(store.bucket, "staging/20260101T000000Z-dead", io.BytesIO(b"x"), 1)
    assert store.clean_staging(older_than_hours=1) == 0
    assert staging_keys(store) == ["staging/20260101T000000Z-dead"]
    time.sleep(1.1)  # last_modified has one-second resolution
    assert store.clean_staging(older_than_hours=0) == 1
    assert staging_keys(store) == []


def test_file_changed_during_upload_is_not_stored(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "checkpoint.bin"
    local.write_bytes(b"new content")
    stale_sha256 = hashlib.sha256(b"old content").hexdigest()
    # As if the file was rewritten between hashing and sending.
    monkeypatch.setattr("posttrain.storage.store.sha256_file", lambda path: (stale_sha256, 11))
    with pytest.raises(SourceChanged, match="checkpoint.bin changed"):
        store.put_file(local)
    assert blob_keys(store) == []


# ---------------------------------------------------------------- folder artifacts


def test_folder_artifact_round_trips_with_its_manifest(
    store: ArtifactStore, tmp_path: Path
) -> None:
    source = make_folder(tmp_path / "adapter")
    (tmp_path / "outside.bin").write_bytes(b"linked")
    (source / "linked.bin").symlink_to(tmp_path / "outside.bin")  # as in a HF cache snapshot

    name = "models/support-bot/lora/1"
    ref = store.put_folder(source, name, metadata={"base_model": "smollm2-135m"})
    assert ref.uri == f"s3://{store.bucket}/{name}/manifest.json"
    assert ref.is_manifest

    manifest = store.get_manifest(ref)
    assert manifest.sha256 == ref.sha256
    assert manifest.metadata == {"base_model": "smollm2-135m"}
    expected = folder_contents(source)
    assert {e.path: e.size_bytes for e in manifest.files} == {
        p: len(b) for p, b in expected.items()
    }
    for entry in manifest.files:
        assert entry.sha256 == hashlib.sha256(expected[entry.path]).hexdigest()
    assert store.get_manifest(name) == manifest
    assert store.resolve(name) == ref
    assert list(store.list_artifacts("models/")) == [name]

    # The manifest is also a blob: the artifact id resolves without the name.
    by_id = ArtifactRef(
        f"s3://{store.bucket}/blobs/sha256/{ref.sha256}", ref.sha256, ref.size_bytes
    )
    assert store.get_manifest(by_id) == manifest

    out = store.download_folder(name, tmp_path / "downloaded")
    assert folder_contents(out) == expected
    empty = tmp_path / "empty-dest"
    empty.mkdir()
    assert folder_contents(store.download_folder(ref, empty)) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "adapter",
        "downloaded",
        "empty-dest",
        "outside.bin",
    ]  # no partial folders left
    with pytest.raises(FileExistsError, match="downloaded"):
        store.download_folder(ref, out)


def test_publishing_is_idempotent_and_versions_are_immutable(
    store: ArtifactStore, tmp_path: Path
) -> None:
    source = make_folder(tmp_path / "model")
    name = "models/base/1"
    first = store.put_folder(source, name)
    assert store.put_folder(source, name) == first  # a redelivered event: same result

    (source / "config.json").write_text('{"model_type": "llama", "hidden_size": 128}')
    with pytest.raises(ArtifactExists, match="models/base/1"):
        store.put_folder(source, name)
    assert store.resolve(name) == first

    second = store.put_folder(source, "models/base/2")
    alias = store.publish("models/base/production", first)
    assert alias.sha256 == first.sha256
    moved = store.publish("models/base/production", second, overwrite=True)
    assert moved.sha256 == second.sha256
    assert sorted(store.list_artifacts()) == [
        "models/base/1",
        "models/base/2",
        "models/base/production",
    ]

    store.delete("models/base/production")
    assert not store.exists("models/base/production")
    assert store.exists("models/base/1")


def test_publish_files_from_mixed_sources_in_parallel(store: ArtifactStore, tmp_path: Path) -> None:
    local = tmp_path / "weights.bin"
    local.write_bytes(os.urandom(10_000))
    existing = store.put_bytes(b"tokenizer")
    files = {f"shards/{i:02d}.json": f'{{"shard": {i}}}'.encode() for i in range(20)}
    ref = store.publish_files(
        {
            **files,
            "weights.bin": local,
            "tokenizer.json": existing,
            "rows.jsonl": iter([b"a\n", b"b\n"]),
        },
        name="datasets/mixed/1",
    )
    out = store.download_folder(ref, tmp_path / "out")
    assert (out / "weights.bin").read_bytes() == local.read_bytes()
    assert (out / "tokenizer.json").read_bytes() == b"tokenizer"
    assert (out / "rows.jsonl").read_bytes() == b"a\nb\n"
    assert (out / "shards" / "07.json").read_bytes() == b'{"shard": 7}'

    with pytest.raises(TypeError, match="ambiguous"):
        store.publish_files({"x": "some/path"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"^file path='\.\./x'"):
        store.publish_files({"../x": b"x"})


def test_folder_download_verifies_every_file(
    store: ArtifactStore, raw_client: Minio, tmp_path: Path
) -> None:
    source = make_folder(tmp_path / "model")
    ref = store.put_folder(source, "models/corrupt/1")
    config_sha256 = hashlib.sha256((source / "config.json").read_bytes()).hexdigest()
    blob = f"blobs/sha256/{config_sha256}"
    other = store.put_bytes(
        b'{"model_type": "gpt2", "hidden_size": 99}'[: (source / "config.json").stat().st_size]
    )
    raw_client.copy_object(store.bucket, blob, CopySource(store.bucket, other.key))

    with pytest.raises(ChecksumMismatch, match=blob):
        store.download_folder(ref, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing half-written


def test_a_tampered_manifest_is_rejected(
    store: ArtifactStore, raw_client: Minio, tmp_path: Path
) -> None:
    ref = store.put_folder(make_folder(tmp_path / "model"), "models/tampered/1")
    evil = (
        b'{"schema":"posttrain.artifact-manifest/v1","metadata":{},"files":[{"path":"../../x","sha256":"'
        + (b"0" * 64)
        + b'","size_bytes":0}]}'
    )
    raw_client.put_object(store.bucket, ref.key, io.BytesIO(evil), len(evil))
    with pytest.raises(ChecksumMismatch):
        store.get_manifest(ref)  # the ref's sha256 no longer matches
    with pytest.raises(ManifestInvalid, match="not a valid artifact manifest"):
        store.download_folder("models/tampered/1", tmp_path / "out")  # by name: parsed, refused
    assert not (tmp_path / "out").exists()


def test_root_prefix_keeps_everything_under_it(
    s3_settings: S3Settings, store: ArtifactStore, tmp_path: Path
) -> None:
    tenant = ArtifactStore.from_settings(s3_settings, root_prefix="tenants/acme")
    ref = tenant.put_folder(make_folder(tmp_path / "model"), "models/a/1")
    assert ref.key == "tenants/acme/models/a/1/manifest.json"
    assert all(obj.key.startswith("tenants/acme/") for obj in store.list_objects())
    assert list(tenant.list_artifacts()) == ["models/a/1"]
    assert list(store.list_artifacts()) == ["tenants/acme/models/a/1"]


def test_presigned_url_serves_the_blob(store: ArtifactStore) -> None:
    ref = store.put_bytes(b"report body")
    with urllib.request.urlopen(store.presigned_get_url(ref)) as response:  # noqa: S310 - loopback
        assert response.read() == b"report body"


# ---------------------------------------------------------------- clear errors


def test_bad_credentials_say_they_were_refused_by_the_endpoint(
    s3_settings: S3Settings, store: ArtifactStore
) -> None:
    wrong = s3_settings.model_copy(update={"secret_key": "not-the-secret"})
    with pytest.raises(CredentialsRefused) as caught:
        ArtifactStore.from_settings(wrong).put_bytes(b"x")
    message = str(caught.value)
    assert "refused the credentials" in message
    assert f"http://{s3_settings.endpoint}" in message
    assert "not-the-secret" not in message

    unknown = s3_settings.model_copy(update={"access_key": "nobody"})
    with pytest.raises(CredentialsRefused, match="'nobody'"):
        list(ArtifactStore.from_settings(unknown).list_artifacts())


def test_missing_bucket_says_which_and_how_to_create_it(
    s3_settings: S3Settings, raw_client: Minio
) -> None:
    missing = ArtifactStore.from_settings(s3_settings)  # a fresh name: no such bucket yet
    with pytest.raises(BucketMissing) as caught:
        missing.put_bytes(b"x")
    assert f"bucket '{s3_settings.bucket}' does not exist" in str(caught.value)
    assert "ensure_bucket()" in str(caught.value)
    assert not raw_client.bucket_exists(s3_settings.bucket)  # not created behind our back
    try:
        assert missing.ensure_bucket() is True
        assert missing.ensure_bucket() is False
        ref = missing.put_bytes(b"x")
        assert missing.get_bytes(ref) == b"x"
    finally:
        if raw_client.bucket_exists(s3_settings.bucket):
            for obj in raw_client.list_objects(s3_settings.bucket, recursive=True):
                raw_client.remove_object(s3_settings.bucket, obj.object_name)
            raw_client.remove_bucket(s3_settings.bucket)


def test_unreachable_endpoint_is_named(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = ArtifactStore(f"127.0.0.1:{port}", "k", "s", "bucket", connect_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(EndpointUnreachable, match=f"http://127.0.0.1:{port}"):
        store.put_bytes(b"x")
    assert time.monotonic() - started < 10


def test_missing_objects_and_names_raise_not_found(store: ArtifactStore, tmp_path: Path) -> None:
    ghost = ArtifactRef(f"s3://{store.bucket}/blobs/sha256/{'a' * 64}", "a" * 64, 1)
    with pytest.raises(ArtifactNotFound, match=ghost.uri):
        store.get_bytes(ghost)
    assert not store.exists(ghost)
    with pytest.raises(ArtifactNotFound, match="no artifact named 'models/none/1'"):
        store.download_folder("models/none/1", tmp_path / "out")
    missing_blob = Manifest([ManifestEntry("weights.bin", "b" * 64, 5)])
    with pytest.raises(ArtifactNotFound, match="is not stored"):
        store.publish("models/alias", missing_blob)
    assert not store.exists("models/alias")


# ---------------------------------------------------------------- 100 MB


def _pseudo_random_chunks(total: int, chunk: int = MiB) -> Iterator[bytes]:
    """Deterministic, incompressible data made on the fly: never 100 MB in memory."""
    seed = hashlib.sha256(b"posttrain").digest()
    block = hashlib.sha256(seed).digest() * (chunk // 32)
    for i in range(total // chunk):
        yield i.to_bytes(8, "big") + block[8:]


@pytest.mark.slow
def test_100mb_streamed_artifact_round_trips_with_checksum(
    store: ArtifactStore, tmp_path: Path
) -> None:
    total = 100 * MiB
    expected = hashlib.sha256()
    for chunk in _pseudo_random_chunks(total):
        expected.update(chunk)

    ref = store.put_stream(_pseudo_random_chunks(total))
    assert (ref.sha256, ref.size_bytes) == (expected.hexdigest(), total)
    assert staging_keys(store) == []

    dest = store.download_file(ref, tmp_path / "big.bin")
    assert sha256_file(dest) == (expected.hexdigest(), total)

    named = store.publish_files({"data/big.bin": ref}, name="datasets/big/1")
    out = store.download_folder(named, tmp_path / "folder")
    assert sha256_file(out / "data" / "big.bin") == (expected.hexdigest(), total)
