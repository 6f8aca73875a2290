"""Fixtures for the artifact store tests: a store on a fresh bucket of the session's real
S3 server (the `s3_settings` fixture of tests/conftest.py), and a raw minio client to
tamper with objects behind the store's back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from minio import Minio
from s3_buckets import remove_bucket

from posttrain.config import S3Settings
from posttrain.storage import ArtifactStore


@pytest.fixture
def raw_client(s3_settings: S3Settings) -> Minio:
    return Minio(
        s3_settings.endpoint,
        access_key=s3_settings.access_key,
        secret_key=s3_settings.secret_key,
        secure=s3_settings.secure,
        region=s3_settings.region,
    )


@pytest.fixture
def store(s3_settings: S3Settings, raw_client: Minio) -> Iterator[ArtifactStore]:
    """A store on a bucket of its own, removed afterwards: on SeaweedFS every bucket holds
    a volume until it is deleted, and a session has a limited number of them."""
    artifact_store = ArtifactStore.from_settings(s3_settings)
    artifact_store.ensure_bucket()
    yield artifact_store  # what follows runs whether the test passed or failed
    remove_bucket(raw_client, s3_settings.bucket)
