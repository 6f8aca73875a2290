"""Errors of the artifact store: each says what failed and where (endpoint, bucket, key).

Owns the exception classes only. Must never hold or print a secret key.
"""

from __future__ import annotations


class ArtifactStoreError(Exception):
    """Base of every error the artifact store raises on purpose."""


class CredentialsRefused(ArtifactStoreError):
    """The S3 endpoint rejected the access key / secret key (or the key lacks access)."""


class BucketMissing(ArtifactStoreError):
    """The configured bucket does not exist on the endpoint."""


class EndpointUnreachable(ArtifactStoreError):
    """No S3 server answered at the endpoint, or it dropped the connection."""


class ArtifactNotFound(ArtifactStoreError):
    """No object (blob or named artifact) at the key asked for."""


class ArtifactExists(ArtifactStoreError):
    """A name is already published with different content (published versions are immutable)."""


class ManifestInvalid(ArtifactStoreError):
    """An object that should be a manifest does not parse as one."""


class SourceChanged(ArtifactStoreError):
    """A local file changed between hashing and uploading it; nothing was published."""


class ChecksumMismatch(ArtifactStoreError):
    """What was read does not hash to the sha256 it was stored under or listed with.
    `actual_sha256` is None when reading stopped early because more bytes arrived than
    the ref's size."""

    def __init__(
        self,
        uri: str,
        expected_sha256: str,
        actual_sha256: str | None,
        expected_size: int,
        actual_size: int,
    ) -> None:
        self.uri = uri
        self.expected_sha256 = expected_sha256
        self.actual_sha256 = actual_sha256
        self.expected_size = expected_size
        self.actual_size = actual_size
        if actual_sha256 is None:
            got = f"more than {expected_size} bytes"
        else:
            got = f"sha256 {actual_sha256} ({actual_size} bytes)"
        super().__init__(
            f"checksum mismatch reading {uri}: expected sha256 {expected_sha256} "
            f"({expected_size} bytes), got {got}; the stored object is corrupt or was replaced"
        )

    def __reduce__(self):  # noqa: ANN204 - keeps the fields when sent to another process
        fields = (self.uri, self.expected_sha256, self.actual_sha256)
        return (type(self), (*fields, self.expected_size, self.actual_size))
