"""API keys, the principals they stand for, and the interceptor that checks them.

A key looks like `pt_<id>_<secret>`: the id is public (it names the key in logs, listings
and revocation, and finds its row), the secret is 32 random bytes. Only a salted sha256
of the secret is stored, in the `api_keys` table; the full key is shown once, when it is
created. Roles are a fixed vocabulary (Role); `admin` implies every other role.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import grpc
import sqlalchemy as sa
from alembic.operations import Operations
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import DateTime, Engine, String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from posttrain.db import Base, Migration, session_scope, utcnow
from posttrain.rpc._interceptors import (
    MetadataClientInterceptor,
    in_own_context,
    is_infrastructure,
    metadata_value,
    service_of,
    wrap_handler,
)
from posttrain.rpc.errors import (
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)
from posttrain.v1 import common_pb2

log = logging.getLogger(__name__)

AUTHORIZATION_HEADER = "authorization"
API_KEY_HEADER = "x-api-key"
KEY_PREFIX = "pt_"
_KEY_ID = re.compile(r"[a-z0-9]{4,32}")
_MIN_SECRET_CHARS = 16
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class Role(StrEnum):
    """Every role a key can hold; services check these names and no others."""

    VIEWER = "viewer"  # read datasets, jobs, models, reports
    UPLOADER = "uploader"  # upload datasets
    APPROVER = "approver"  # approve or reject regulated datasets (never their own upload)
    TRAINER = "trainer"  # submit and cancel training jobs
    OPERATOR = "operator"  # promote, roll back, deploy, run experiments
    RATER = "rater"  # label human-review items and anchor sets
    CLIENT = "client"  # call the inference gateway
    ADMIN = "admin"  # everything, including managing keys


ROLES: frozenset[str] = frozenset(r.value for r in Role)


@dataclass(frozen=True)
class Principal:
    """Who is calling, as resolved from an API key."""

    name: str
    roles: frozenset[str]
    tenant: str
    key_id: str = ""

    def has_role(self, *roles: str) -> bool:
        return Role.ADMIN in self.roles or any(r in self.roles for r in roles)

    def tenant_scope(self) -> str | None:
        """The tenant whose rows the caller may see; None = every tenant (admin)."""
        return None if Role.ADMIN in self.roles else self.tenant

    def to_proto(self) -> common_pb2.Principal:
        return common_pb2.Principal(name=self.name, roles=sorted(self.roles), tenant=self.tenant)


_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "posttrain_principal", default=None
)


def current_principal() -> Principal | None:
    """The caller of the RPC being served; None outside an RPC or when auth is off."""
    return _principal.get()


def require_principal() -> Principal:
    principal = _principal.get()
    if principal is None:
        raise Unauthenticated()
    return principal


def require_role(principal: Principal | None, *roles: str) -> Principal:
    """`principal` if it holds any of `roles` (or admin); PermissionDenied naming them if not."""
    if not roles:
        raise ValueError("require_role needs at least one role")
    if principal is None:
        raise Unauthenticated()
    if principal.has_role(*roles):
        return principal
    # str(): a Role member's repr is "<Role.OPERATOR: 'operator'>", not what a person reads.
    wanted = " or ".join(repr(str(r)) for r in roles)
    held = ", ".join(sorted(principal.roles)) or "none"
    raise PermissionDenied(f"{principal.name!r} needs role {wanted} (has: {held})")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    roles: Mapped[str] = mapped_column(String(500))  # sorted, comma-separated
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    salt: Mapped[str] = mapped_column(String(64))  # hex
    secret_sha256: Mapped[str] = mapped_column(String(64))  # hex sha256(salt || secret)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def _create_api_keys(op: Operations) -> None:
    # Spelled out rather than taken from ApiKey: a migration must not change when the model does.
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("roles", sa.String(500), nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"])


AUTH_MIGRATIONS = [Migration("0001_api_keys", _create_api_keys)]


@dataclass(frozen=True)
class ApiKeyInfo:
    """What may be shown about a key: everything but its secret."""

    id: str
    name: str
    roles: frozenset[str]
    tenant: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None


def parse_key(key: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    if not key.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = key[len(KEY_PREFIX) :].partition("_")
    if not sep or not _KEY_ID.fullmatch(key_id) or len(secret) < _MIN_SECRET_CHARS:
        return None
    return key_id, secret


def _digest(salt: bytes, secret: str) -> str:
    return hashlib.sha256(salt + secret.encode()).hexdigest()


class ApiKeyStore:
    """API keys in the `api_keys` table (AUTH_MIGRATIONS must have been applied).

    Successful lookups are cached for `cache_seconds` so that each RPC does not hit the
    database; a revocation made through this store takes effect at once, one made by
    another process within `cache_seconds`.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        cache_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def create_key(self, name: str, roles: Iterable[str], tenant: str) -> str:
        """A new key; the returned plaintext is the only copy there will ever be."""
        key = f"{KEY_PREFIX}{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
        self._insert(key, name, roles, tenant)
        return key

    def add_key(self, key: str, name: str, roles: Iterable[str], tenant: str) -> bool:
        """Stores a key chosen elsewhere (the bootstrap admin key); False if its id exists."""
        parsed = parse_key(key)
        if parsed is None:
            raise InvalidArgument(
                "key",
                f"must look like {KEY_PREFIX}<id>_<secret>: id of 4-32 lowercase letters or "
                f"digits, secret of at least {_MIN_SECRET_CHARS} characters",
            )
        with session_scope(self._engine) as session:
            if session.get(ApiKey, parsed[0]) is not None:
                return False
        try:
            self._insert(key, name, roles, tenant)
        except IntegrityError:  # another process sharing this database added it first
            return False
        return True

    def _insert(self, key: str, name: str, roles: Iterable[str], tenant: str) -> None:
        role_set = frozenset(str(r) for r in roles)
        known = ", ".join(sorted(ROLES))
        violations = []
        if not name.strip():
            violations.append(FieldViolation("name", "must not be empty"))
        if not tenant.strip():
            violations.append(FieldViolation("tenant", "must not be empty"))
        elif not TENANT_NAME.fullmatch(tenant):
            # A tenant is a segment of object keys (datasets/<tenant>/...): no '/', no '..'.
            violations.append(
                FieldViolation(
                    "tenant",
                    f"{tenant[:120]!r} is not a valid tenant: use 1-100 of A-Z a-z 0-9 . _ - "
                    "starting with a letter or digit",
                )
            )
        if not role_set:
            violations.append(FieldViolation("roles", f"at least one of {known}"))
        elif unknown := role_set - ROLES:
            violations.append(
                FieldViolation("roles", f"unknown {', '.join(sorted(unknown))}; known: {known}")
            )
        if violations:
            raise InvalidArgument(violations=violations)
        key_id, secret = parse_key(key) or ("", "")
        salt = secrets.token_bytes(16)
        with session_scope(self._engine) as session:
            session.add(
                ApiKey(
                    id=key_id,
                    name=name,
                    roles=",".join(sorted(role_set)),
                    tenant=tenant,
                    salt=salt.hex(),
                    secret_sha256=_digest(salt, secret),
                    created_at=utcnow(),
                )
            )
        log.info(
            "created API key %s (%s) for tenant %s with roles %s",
            key_id,
            name,
            tenant,
            sorted(role_set),
        )

    def revoke(self, key: str) -> bool:
        """Revokes a key given by id (or as the full key); False if unknown or already revoked."""
        parsed = parse_key(key)
        key_id = parsed[0] if parsed else key
        with session_scope(self._engine) as session:
            row = session.get(ApiKey, key_id)
            if row is None or row.revoked_at is not None:
                return False
            row.revoked_at = utcnow()
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if v[1].key_id != key_id}
        log.info("revoked API key %s", key_id)
        return True

    def authenticate(self, key: str | None) -> Principal | None:
        """The principal of a valid, unrevoked key; None for anything else."""
        if not key:
            return None
        cache_key = hashlib.sha256(key.encode()).hexdigest()
        now = self._clock()
        with self._lock:
            hit = self._cache.get(cache_key)
        if hit is not None and hit[0] > now:
            return hit[1]
        principal = self._lookup(key)
        if principal is not None and self._cache_seconds > 0:
            with self._lock:
                if len(self._cache) >= 10_000:  # a bound, not an LRU: keys are few
                    self._cache.clear()
                self._cache[cache_key] = (now + self._cache_seconds, principal)
        return principal

    def _lookup(self, key: str) -> Principal | None:
        parsed = parse_key(key)
        key_id, secret = parsed or ("", key)
        row = None
        if parsed is not None:
            with session_scope(self._engine) as session:
                row = session.get(ApiKey, key_id)
        # Compare even when there is no row, so that timing does not tell which ids exist.
        salt = bytes.fromhex(row.salt) if row else b"\0" * 16
        expected = row.secret_sha256 if row else "0" * 64
        matches = hmac.compare_digest(_digest(salt, secret), expected)
        if row is None or not matches or row.revoked_at is not None:
            return None
        return Principal(
            name=row.name,
            roles=frozenset(filter(None, row.roles.split(","))),
            tenant=row.tenant,
            key_id=row.id,
        )

    def list_keys(self, *, include_revoked: bool = False) -> list[ApiKeyInfo]:
        with session_scope(self._engine) as session:
            query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
            if not include_revoked:
                query = query.where(ApiKey.revoked_at.is_(None))
            return [
                ApiKeyInfo(
                    id=row.id,
                    name=row.name,
                    roles=frozenset(filter(None, row.roles.split(","))),
                    tenant=row.tenant,
                    created_at=row.created_at,
                    revoked_at=row.revoked_at,
                )
                for row in session.scalars(query)
            ]


class AuthSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="POSTTRAIN_AUTH_", extra="ignore", populate_by_name=True
    )

    db_url: str = Field(
        "",
        description="SQLAlchemy URL of the api_keys table; empty = the service's own "
        "database. Point every service at one database to share keys between them.",
    )
    cache_seconds: float = Field(
        10.0, description="how long a successful key lookup is reused without the database"
    )
    bootstrap_admin_key: str = Field(
        "",
        validation_alias=AliasChoices("POSTTRAIN_BOOTSTRAP_ADMIN_KEY", "bootstrap_admin_key"),
        description="a pt_<id>_<secret> key stored (hashed) as an admin key at start-up if "
        "its id is new; for the local stack and demos. Empty = none",
    )
    bootstrap_tenant: str = Field("default", description="tenant of the bootstrap admin key")


def seed_bootstrap_admin_key(keys: ApiKeyStore, key: str, *, tenant: str = "default") -> bool:
    """Stores `key` as an admin key unless its id is already there (even if revoked)."""
    added = keys.add_key(key, "bootstrap-admin", [Role.ADMIN], tenant)
    key_id = (parse_key(key) or ("?", ""))[0]
    if added:
        log.info("seeded bootstrap admin key %s", key_id)
    else:
        log.info("bootstrap admin key %s already present; left as it is", key_id)
    return added


def key_from_metadata(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The key in `authorization: Bearer <key>` or `x-api-key: <key>`; "" if malformed."""
    authorization = metadata_value(metadata, AUTHORIZATION_HEADER)
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""
    key = metadata_value(metadata, API_KEY_HEADER)
    return key.strip() if key is not None else None


class AuthInterceptor(grpc.ServerInterceptor):
    """Resolves the caller's API key to a Principal for the RPC (see current_principal).

    Health and reflection are open. With `required=False` a call without a key goes
    through with no principal; a key that is present but wrong is rejected either way.
    """

    def __init__(
        self, keys: ApiKeyStore, *, required: bool = True, exempt_services: Iterable[str] = ()
    ) -> None:
        self._keys = keys
        self._required = required
        self._exempt = frozenset(exempt_services)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_infrastructure(method) or service_of(method) in self._exempt:
            return handler

        def setup(_request: Any, context: grpc.ServicerContext) -> None:
            key = key_from_metadata(context.invocation_metadata())
            if key is None:
                if self._required:
                    context.abort(
                        grpc.StatusCode.UNAUTHENTICATED,
                        f"missing API key: send '{AUTHORIZATION_HEADER}: Bearer <key>'",
                    )
                return
            principal = self._keys.authenticate(key)
            if principal is None:
                key_id = (parse_key(key) or ("(malformed)", ""))[0]
                log.warning("rejected %s: invalid or revoked API key %s", method, key_id)
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid or revoked API key")
            _principal.set(principal)

        return wrap_handler(handler, lambda b, streaming: in_own_context(setup, b, streaming))


def api_key_client_interceptor(key: str) -> MetadataClientInterceptor:
    bearer = [(AUTHORIZATION_HEADER, f"Bearer {key}")]
    return MetadataClientInterceptor(lambda: bearer)
