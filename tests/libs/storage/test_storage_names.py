"""Pure checks of the artifact store's names, refs, manifests and hashing (no server)."""

from __future__ import annotations

import hashlib
import io

import pytest

from posttrain.storage import (
    ArtifactRef,
    ArtifactStore,
    Manifest,
    ManifestEntry,
    ManifestInvalid,
    parse_s3_uri,
)
from posttrain.storage.hashing import HashingReader
from posttrain.storage.keys import check_artifact_name, check_prefix, check_relative_name

SHA_OF_EMPTY = hashlib.sha256(b"").hexdigest()

ESCAPING_NAMES = [
    "",
    "../etc/passwd",
    "models/../../other-tenant/x",
    "a/./b",
    ".",
    "/absolute/name",
    "back\\slash",
    "a//b",
    "trailing/",
    "nul\x00byte",
    "new\nline",
    "del\x7fchar",
    "c1\x85control",
]


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_escaping_artifact_names_are_rejected_naming_the_argument(name: str) -> None:
    with pytest.raises(ValueError, match=r"^name="):
        check_artifact_name(name)


@pytest.mark.parametrize("name", ["blobs/x", "staging/abc", "models/a/manifest.json/b"])
def test_names_inside_store_internals_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        check_artifact_name(name)


def test_ordinary_names_pass() -> None:
    for name in ["datasets/support-chats/3", "models/llama-3.2-1b/lora/7", "reports/eval 42.json"]:
        assert check_artifact_name(name) == name
    assert check_prefix("", "prefix") == ""
    assert check_prefix("datasets/", "prefix") == "datasets/"


@pytest.mark.parametrize("path", ["../evil", "/etc/cron.d/x", "a/../../b", "a\\..\\b"])
def test_manifest_paths_cannot_escape_the_folder(path: str) -> None:
    with pytest.raises(ValueError, match="manifest path"):
        ManifestEntry(path, SHA_OF_EMPTY, 0)


def test_a_manifest_from_the_server_with_an_escaping_path_is_invalid() -> None:
    evil = (
        b'{"schema":"posttrain.artifact-manifest/v1","metadata":{},'
        b'"files":[{"path":"../../.bashrc","sha256":"'
        + SHA_OF_EMPTY.encode()
        + b'","size_bytes":0}]}'
    )
    with pytest.raises(ManifestInvalid, match=r"s3://b/m.*not a valid artifact manifest"):
        Manifest.from_json_bytes(evil, "s3://b/m")


@pytest.mark.parametrize("root_prefix", ["../up", "/abs", "a//b"])
def test_store_root_prefix_cannot_escape(root_prefix: str) -> None:
    with pytest.raises(ValueError, match=r"^root_prefix="):
        ArtifactStore("127.0.0.1:1", "k", "s", "bucket", root_prefix=root_prefix)


def test_store_arguments_are_checked_with_their_name() -> None:
    with pytest.raises(ValueError, match=r"^bucket="):
        ArtifactStore("127.0.0.1:1", "k", "s", "Bad_Bucket")
    with pytest.raises(ValueError, match=r"^endpoint="):
        ArtifactStore("http://127.0.0.1:1", "k", "s", "bucket")
    with pytest.raises(ValueError, match=r"^part_size="):
        ArtifactStore("127.0.0.1:1", "k", "s", "bucket", part_size=1024)


def test_refs_parse_and_reject_escaping_uris() -> None:
    assert parse_s3_uri("s3://bkt/blobs/sha256/" + SHA_OF_EMPTY) == (
        "bkt",
        "blobs/sha256/" + SHA_OF_EMPTY,
    )
    for uri in ["s3://bkt/../x", "s3://bkt/", "s3://bkt", "http://bkt/x", "s3:///x"]:
        with pytest.raises(ValueError, match="uri"):
            ArtifactRef(uri, SHA_OF_EMPTY, 0)
    with pytest.raises(ValueError, match="sha256"):
        ArtifactRef("s3://bkt/x", "ABC", 0)


def test_ref_round_trips_through_protobuf() -> None:
    ref = ArtifactRef("s3://bkt/models/a/manifest.json", SHA_OF_EMPTY, 12, "application/json")
    message = ref.to_proto()
    assert (message.uri, message.sha256, message.size_bytes) == (ref.uri, ref.sha256, 12)
    assert ArtifactRef.from_proto(message) == ref


def test_manifest_bytes_are_canonical_so_the_id_does_not_depend_on_order() -> None:
    a = ManifestEntry("config.json", SHA_OF_EMPTY, 0)
    b = ManifestEntry("weights/model.safetensors", hashlib.sha256(b"w").hexdigest(), 1)
    first = Manifest([a, b], {"base_model": "smollm2"})
    second = Manifest([b, a], {"base_model": "smollm2"})
    assert first.to_json_bytes() == second.to_json_bytes()
    assert first.sha256 == second.sha256 == hashlib.sha256(first.to_json_bytes()).hexdigest()
    assert Manifest.from_json_bytes(first.to_json_bytes(), "test") == first
    assert first.total_size_bytes == 1


def test_manifest_rejects_a_path_that_is_both_file_and_folder() -> None:
    with pytest.raises(ValueError, match="both a file and a folder"):
        Manifest([ManifestEntry("a", SHA_OF_EMPTY, 0), ManifestEntry("a/b", SHA_OF_EMPTY, 0)])


@pytest.mark.parametrize("chunk_sizes", [[1], [3, 0, 7], [1000], [4096, 1, 4096]])
def test_hashing_reader_returns_full_reads_from_chunk_iterables(chunk_sizes: list[int]) -> None:
    data = bytes(range(256)) * 40
    chunks, offset = [], 0
    while offset < len(data):
        for size in chunk_sizes:
            chunks.append(data[offset : offset + size])
            offset += size
    reader = HashingReader(iter(chunks))
    assert reader.read(1000) == data[:1000]  # one full read, whatever the chunking
    rest = reader.read(10**6)
    assert reader.read(10) == b""
    assert data[:1000] + rest == data
    assert reader.sha256 == hashlib.sha256(data).hexdigest()
    assert reader.bytes_read == len(data)


def test_hashing_reader_over_a_file_object() -> None:
    reader = HashingReader(io.BytesIO(b"abc"))
    assert reader.read(-1) == b"abc"
    assert reader.sha256 == hashlib.sha256(b"abc").hexdigest()


def test_names_are_checked_even_for_non_str() -> None:
    with pytest.raises(ValueError, match="file path must be a str"):
        check_relative_name(b"bytes", "file path")  # type: ignore[arg-type]
