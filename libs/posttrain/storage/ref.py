"""ArtifactRef: what a caller keeps to find and verify one stored object.

Owns the s3://bucket/key URI form and the conversion to and from the protobuf
`posttrain.v1.ArtifactRef`. Must never talk to S3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from posttrain.storage.keys import check_relative_name, check_sha256

if TYPE_CHECKING:
    from posttrain.v1 import common_pb2

BLOB_MEDIA_TYPE = "application/octet-stream"
MANIFEST_MEDIA_TYPE = "application/vnd.posttrain.manifest.v1+json"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """('bucket', 'key') of 's3://bucket/key'; ValueError for anything else."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ValueError(f"uri={uri!r} is not an s3://bucket/key URI")
    bucket, sep, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not sep:
        raise ValueError(f"uri={uri!r} is not an s3://bucket/key URI")
    check_relative_name(key, "uri key")
    return bucket, key


@dataclass(frozen=True)
class ArtifactRef:
    """One stored object. `sha256` and `size_bytes` describe the object at `uri`; for a
    folder artifact that object is its manifest, so `sha256` is the artifact id."""

    uri: str
    sha256: str
    size_bytes: int
    media_type: str = BLOB_MEDIA_TYPE

    def __post_init__(self) -> None:
        parse_s3_uri(self.uri)
        check_sha256(self.sha256, "ArtifactRef.sha256")
        if not isinstance(self.size_bytes, int) or self.size_bytes < 0:
            raise ValueError(f"ArtifactRef.size_bytes={self.size_bytes!r} must be an int >= 0")

    @property
    def bucket(self) -> str:
        return parse_s3_uri(self.uri)[0]

    @property
    def key(self) -> str:
        return parse_s3_uri(self.uri)[1]

    @property
    def is_manifest(self) -> bool:
        return self.media_type == MANIFEST_MEDIA_TYPE

    def to_proto(self) -> common_pb2.ArtifactRef:
        # Imported here: the generated code is built by `make proto`, and the store itself
        # must work without it.
        from posttrain.v1 import common_pb2

        return common_pb2.ArtifactRef(
            uri=self.uri, sha256=self.sha256, size_bytes=self.size_bytes, media_type=self.media_type
        )

    @classmethod
    def from_proto(cls, message: common_pb2.ArtifactRef) -> ArtifactRef:
        return cls(
            uri=message.uri,
            sha256=message.sha256,
            size_bytes=message.size_bytes,
            media_type=message.media_type or BLOB_MEDIA_TYPE,
        )
