"""A migrated registry database per test, on SQLite and PostgreSQL (the `db_url` fixture),
and an artifact store on a bucket of the real S3 server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from registry_factories import migrate
from s3_buckets import store_on_new_bucket
from sqlalchemy import Engine

from posttrain.db import create_db_engine
from posttrain.storage import ArtifactStore


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = migrate(create_db_engine(db_url))
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def store(stack) -> Iterator[ArtifactStore]:
    """One bucket for the module, on the session's real S3 server."""
    with store_on_new_bucket(stack.s3_settings(bucket=f"reg-{uuid.uuid4().hex[:10]}")) as store:
        yield store
