"""Buckets of a test's own on the session's S3 server, and their removal: SeaweedFS gives
every bucket a volume until it is deleted, and a session has a limited number of them.
Importable from any test module (tests/ is on sys.path through the root conftest)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from minio import Minio
from minio.deleteobjects import DeleteObject

from posttrain.config import S3Settings
from posttrain.storage import ArtifactStore


def remove_bucket(client: Minio, bucket: str) -> None:
    """Delete every object of the bucket, then the bucket; fails if an object stays."""
    leftovers = [DeleteObject(o.object_name) for o in client.list_objects(bucket, recursive=True)]
    errors = list(client.remove_objects(bucket, leftovers))
    assert not errors, errors
    client.remove_bucket(bucket)


@contextmanager
def store_on_new_bucket(settings: S3Settings) -> Iterator[ArtifactStore]:
    """A store on settings.bucket, created here and removed with its objects afterwards."""
    store = ArtifactStore.from_settings(settings)
    store.ensure_bucket()
    try:
        yield store
    finally:
        remove_bucket(store.client, settings.bucket)
