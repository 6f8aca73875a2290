"""The artifact store: datasets, checkpoints, models, adapters and reports in S3.

Content-addressed blobs (blobs/sha256/<hex>), folder artifacts described by a manifest
whose sha256 is the artifact id, atomic publish under a name, verified reads. Speaks the
S3 API only (minio client): MinIO in production, SeaweedFS on a developer machine.
This package knows nothing of gRPC, Kafka or the database.
"""

from posttrain.storage.errors import (
    ArtifactExists,
    ArtifactNotFound,
    ArtifactStoreError,
    BucketMissing,
    ChecksumMismatch,
    CredentialsRefused,
    EndpointUnreachable,
    ManifestInvalid,
    SourceChanged,
)
from posttrain.storage.manifest import Manifest, ManifestEntry
from posttrain.storage.ref import BLOB_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, ArtifactRef, parse_s3_uri
from posttrain.storage.store import ArtifactStore, FileSource, ObjectInfo

__all__ = [
    "BLOB_MEDIA_TYPE",
    "MANIFEST_MEDIA_TYPE",
    "ArtifactExists",
    "ArtifactNotFound",
    "ArtifactRef",
    "ArtifactStore",
    "ArtifactStoreError",
    "BucketMissing",
    "ChecksumMismatch",
    "CredentialsRefused",
    "EndpointUnreachable",
    "FileSource",
    "Manifest",
    "ManifestEntry",
    "ManifestInvalid",
    "ObjectInfo",
    "SourceChanged",
    "parse_s3_uri",
]
