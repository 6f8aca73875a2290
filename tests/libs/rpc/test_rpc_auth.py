"""API keys: hashed at rest, authenticated over real gRPC calls, roles checked."""

from __future__ import annotations

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from rpc_probe import get_alias

from posttrain.db import apply_migrations, create_db_engine
from posttrain.rpc import (
    AUTH_MIGRATIONS,
    ROLES,
    ApiKeyStore,
    InvalidArgument,
    PermissionDenied,
    Principal,
    Unauthenticated,
    make_channel,
    require_role,
    seed_bootstrap_admin_key,
)
from posttrain.rpc.auth import Role, key_from_metadata, parse_key


@pytest.fixture
def store(db_url):
    """A store on each database backend (SQLite, PostgreSQL)."""
    engine = create_db_engine(db_url)
    assert apply_migrations(engine, "auth", AUTH_MIGRATIONS) == ["0001_api_keys"]
    yield ApiKeyStore(engine)
    engine.dispose()


def test_create_authenticate_revoke(store):
    key = store.create_key("ci-bot", ["trainer", "viewer"], "acme")
    principal = store.authenticate(key)
    assert principal == Principal(
        "ci-bot", frozenset({"trainer", "viewer"}), "acme", key_id=parse_key(key)[0]
    )
    assert store.authenticate(key) == principal  # served from the cache
    assert store.revoke(parse_key(key)[0])
    assert store.authenticate(key) is None  # revocation clears the cache
    assert not store.revoke(key)  # already revoked
    assert not store.revoke("nosuchkey")


def test_revocation_elsewhere_takes_effect_when_the_cache_expires(store, db_url):
    now = [0.0]
    engine = create_db_engine(db_url)
    cached = ApiKeyStore(engine, cache_seconds=10, clock=lambda: now[0])
    key = cached.create_key("svc", ["viewer"], "acme")
    assert cached.authenticate(key) is not None
    assert store.revoke(key)  # another process, sharing the database
    now[0] = 5.0
    assert cached.authenticate(key) is not None  # still cached
    now[0] = 11.0
    assert cached.authenticate(key) is None
    engine.dispose()


def test_keys_are_random_and_hashed_at_rest(store, db_url):
    keys = [store.create_key(f"k{i}", ["viewer"], "acme") for i in range(3)]
    assert len(set(keys)) == 3
    for key in keys:
        key_id, secret = parse_key(key)
        assert len(secret) >= 43  # 32 random bytes
    engine = create_db_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM api_keys")).mappings().all()
    engine.dispose()
    dump = repr(rows)
    for key in keys:
        assert parse_key(key)[1] not in dump and key not in dump
    salts = {row["salt"] for row in rows}
    assert len(salts) == 3  # a salt per key


@pytest.mark.parametrize(
    "key",
    ["", "pt_", "garbage", "pt_nosecret", "Bearer x", "pt_UPPER_0123456789abcdefgh", "pt_ab_short"],
)
def test_malformed_keys_do_not_authenticate(store, key):
    assert store.authenticate(key) is None


def test_wrong_secret_for_a_real_id_does_not_authenticate(store):
    key_id, secret = parse_key(store.create_key("a", ["viewer"], "acme"))
    assert store.authenticate(f"pt_{key_id}_{'x' * len(secret)}") is None


def test_create_key_validates_its_arguments(store):
    with pytest.raises(InvalidArgument) as err:
        store.create_key("", ["viewer", "wizard"], "")
    fields = {v.field for v in err.value.violations}
    assert fields == {"name", "roles", "tenant"}
    assert "wizard" in str(err.value)
    with pytest.raises(InvalidArgument):
        store.create_key("x", [], "acme")


def test_list_keys_shows_no_secret(store):
    a = store.create_key("a", ["viewer"], "acme")
    store.create_key("b", ["admin"], "globex")
    store.revoke(a)
    assert [k.name for k in store.list_keys()] == ["b"]
    listed = store.list_keys(include_revoked=True)
    assert {k.name for k in listed} == {"a", "b"}
    assert all(not hasattr(k, "secret_sha256") for k in listed)


def test_bootstrap_admin_key_is_seeded_once(store):
    key = "pt_bootstrap_local-dev-admin-secret"
    assert seed_bootstrap_admin_key(store, key, tenant="acme")
    assert not seed_bootstrap_admin_key(store, key, tenant="acme")
    assert store.authenticate(key) == Principal(
        "bootstrap-admin", frozenset({"admin"}), "acme", "bootstrap"
    )
    store.revoke(key)
    seed_bootstrap_admin_key(store, key)  # a revoked bootstrap key stays revoked
    assert store.authenticate(key) is None
    with pytest.raises(InvalidArgument, match="must look like"):
        seed_bootstrap_admin_key(store, "too-simple")


def test_require_role():
    viewer = Principal("ann", frozenset({"viewer", "uploader"}), "acme")
    assert require_role(viewer, "viewer") is viewer
    assert require_role(viewer, "approver", "uploader") is viewer  # any of them
    with pytest.raises(PermissionDenied, match="'ann' needs role 'approver'"):
        require_role(viewer, "approver")
    # Role members read as their names, as a person (and the web console) shows them.
    with pytest.raises(PermissionDenied, match=r"needs role 'operator' or 'trainer' \(has"):
        require_role(viewer, Role.OPERATOR, Role.TRAINER)
    admin = Principal("root", frozenset({"admin"}), "acme")
    assert require_role(admin, "approver") is admin  # admin implies every role
    with pytest.raises(Unauthenticated):
        require_role(None, "viewer")
    assert {
        "viewer",
        "uploader",
        "approver",
        "trainer",
        "operator",
        "rater",
        "admin",
        "client",
    } == ROLES


def test_key_from_metadata():
    assert key_from_metadata([("authorization", "Bearer pt_a_b")]) == "pt_a_b"
    assert key_from_metadata([("authorization", "bearer  pt_a_b ")]) == "pt_a_b"
    assert key_from_metadata([("x-api-key", "pt_a_b")]) == "pt_a_b"
    assert key_from_metadata([("authorization", "Basic dXNlcg==")]) == ""
    assert key_from_metadata([("other", "x")]) is None


# ------------------------------------------------------------------ over gRPC


def unauthenticated(call) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    return err.value.details()


def test_calls_without_a_key_are_unauthenticated(connect):
    details = unauthenticated(lambda: get_alias(connect(), "ok"))
    assert "authorization: Bearer" in details


def test_wrong_malformed_and_revoked_keys_are_unauthenticated(connect, keys):
    key = keys.create_key("ci", ["viewer"], "acme")
    key_id, secret = parse_key(key)
    unauthenticated(lambda: get_alias(connect(f"pt_{key_id}_{secret[::-1]}"), "ok"))
    unauthenticated(lambda: get_alias(connect("not-a-key"), "ok"))
    assert get_alias(connect(key), "whoami").updated_by == "ci"
    keys.revoke(key_id)
    unauthenticated(lambda: get_alias(connect(key), "ok"))


def test_principal_is_visible_in_the_handler(connect, keys):
    key = keys.create_key("ann", ["uploader", "viewer"], "acme")
    reply = get_alias(connect(key), "whoami")
    assert (reply.updated_by, reply.tenant, reply.previous_model_version_id) == (
        "ann",
        "acme",
        "uploader,viewer",
    )


def test_x_api_key_header_is_accepted(connect, keys):
    key = keys.create_key("bob", ["viewer"], "globex")
    reply = get_alias(connect(), "whoami", metadata=[("x-api-key", key)])
    assert reply.tenant == "globex"


def test_missing_role_is_permission_denied_naming_it(connect, keys):
    key = keys.create_key("ann", ["uploader"], "acme")
    with pytest.raises(grpc.RpcError) as err:
        get_alias(connect(key), "need:approver")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'approver'" in err.value.details()
    assert get_alias(connect(key), "need:approver,uploader")


def test_principal_does_not_leak_between_calls(start_server, keys):
    # One worker thread serves every call: an authenticated call must leave nothing behind
    # for the unauthenticated one that follows it on the same thread.
    server = start_server(auth_required=False, max_workers=1)
    key = keys.create_key("root", ["admin"], "acme")
    with make_channel(server.address, api_key=key) as admin, make_channel(server.address) as anon:
        for _ in range(3):
            assert get_alias(admin, "whoami").updated_by == "root"
            assert get_alias(anon, "whoami").updated_by == ""
        unauthenticated(lambda: get_alias(anon, "need:viewer"))
        with make_channel(server.address, api_key="pt_wrong_0123456789abcdefgh") as wrong:
            unauthenticated(lambda: get_alias(wrong, "ok"))  # a bad key fails even then


def test_health_and_reflection_need_no_key(connect):
    channel = connect()
    health = health_pb2_grpc.HealthStub(channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    assert ProtoReflectionDescriptorDatabase(channel).get_services()
