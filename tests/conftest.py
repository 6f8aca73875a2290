"""Session fixtures: the real local stack (Kafka protocol, S3, Triton) and metadata DBs.

The stack starts once per test session on free ports under a temporary state directory,
so two runs on one machine never clash, and is stopped at the end. With
POSTTRAIN_TEST_DOCKER=1 and a Docker engine that answers, Kafka and S3 come from
testcontainers (Apache Kafka, MinIO) instead; Triton always comes from the local binary.

Databases: `db_url` is parametrized over SQLite and PostgreSQL. PostgreSQL comes from
POSTTRAIN_TEST_POSTGRES_URL (default: the server on 127.0.0.1:5432); each session gets a
fresh database that is dropped afterwards. Without a server the PostgreSQL cases skip
with the reason, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from s3_buckets import store_on_new_bucket
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from posttrain.config import S3Settings
from posttrain.stack import LocalStack, StackPorts
from posttrain.storage import ArtifactStore

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@dataclass
class StackEndpoints:
    """What tests need to reach the running stack, whichever way it was started."""

    kafka_bootstrap: str
    s3: S3Settings
    local: LocalStack | None  # None when Kafka/S3 come from containers

    def s3_settings(self, bucket: str | None = None) -> S3Settings:
        return self.s3.model_copy(update={"bucket": bucket or self.s3.bucket})


def _docker_requested() -> bool:
    if os.environ.get("POSTTRAIN_TEST_DOCKER") != "1":
        return False
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:  # noqa: BLE001 - no engine: fall back to the local binaries
        return False


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A LocalStack object on free ports; components are started by the fixtures below."""
    stack = LocalStack(state_dir=tmp_path_factory.mktemp("stack"), ports=StackPorts.free())
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def stack(local_stack: LocalStack) -> Iterator[StackEndpoints]:
    """Kafka and S3, running for the whole test session."""
    if _docker_requested():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.minio import MinioContainer

        with KafkaContainer().with_kraft() as kafka, MinioContainer() as minio:
            cfg = minio.get_config()
            yield StackEndpoints(
                kafka_bootstrap=kafka.get_bootstrap_server(),
                s3=S3Settings(
                    endpoint=cfg["endpoint"],
                    access_key=cfg["access_key"],
                    secret_key=cfg["secret_key"],
                    bucket=f"test-{uuid.uuid4().hex[:8]}",
                ),
                local=None,
            )
        return
    local_stack.up(["kafka", "s3"])
    yield StackEndpoints(
        kafka_bootstrap=local_stack.kafka_bootstrap,
        s3=local_stack.s3_settings(bucket=f"test-{uuid.uuid4().hex[:8]}"),
        local=local_stack,
    )


@pytest.fixture(scope="session")
def triton(local_stack: LocalStack) -> LocalStack:
    """tritonserver (explicit model control) on the session's stack; started on first use."""
    local_stack.up(["triton"])
    return local_stack


@pytest.fixture
def s3_settings(stack: StackEndpoints) -> S3Settings:
    """A fresh bucket name per test, on the session's S3 server."""
    return stack.s3_settings(bucket=f"t-{uuid.uuid4().hex[:12]}")


# ---------------------------------------------------------------- databases


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, dropped afterwards."""
    admin_url = make_url(os.environ.get("POSTTRAIN_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    name = f"posttrain_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        message = f"PostgreSQL not reachable at {admin_url.render_as_string()}: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI=true: PostgreSQL tests must run)")
        pytest.skip(message)
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _backend_url(request: pytest.FixtureRequest, sqlite_dir: Path) -> Iterator[str]:
    """A DB URL with an empty schema for request.param's backend. PostgreSQL tests share the
    session's database, so each user gets its own schema there (search_path)."""
    if request.param == "sqlite":
        yield f"sqlite:///{sqlite_dir / 'test.sqlite3'}"
        return
    base = request.getfixturevalue("postgres_server_url")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A DB URL with an empty schema, once per backend, for one test."""
    yield from _backend_url(request, tmp_path)


@pytest.fixture(scope="module", params=BACKENDS)
def module_db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Like `db_url`, for a whole module: what a module sets up once (a consumer group
    join, deployments) is set up once per backend, not per test."""
    yield from _backend_url(request, tmp_path_factory.mktemp("db"))


@pytest.fixture(scope="module")
def module_store(stack) -> Iterator[ArtifactStore]:
    """A fresh bucket for the module on the stack's S3, emptied and removed afterwards
    (SeaweedFS gives every bucket a volume, and a session has a limited number of them)."""
    with store_on_new_bucket(stack.s3_settings(bucket=f"mod-{uuid.uuid4().hex[:10]}")) as store:
        yield store
