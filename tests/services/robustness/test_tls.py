"""TLS for gRPC as a setting, on a real service: the registry served as service_main
serves it (its register(), the standard interceptors, an API key), with the server's
certificate and key from GrpcServerSettings (POSTTRAIN_GRPC_TLS_CERT_FILE / _KEY_FILE) and
the clients' trust from GrpcClientSettings (POSTTRAIN_GRPC_CLIENT_TLS_CA_FILE), which
make_channel reads for every client: the CLI, the health check and the service-to-service
lookups. Certificates are self-signed, made here with the openssl CLI.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from posttrain.config import GrpcServerSettings
from posttrain.db import apply_migrations, create_db_engine
from posttrain.rpc import (
    AUTH_MIGRATIONS,
    ApiKeyStore,
    GrpcServer,
    make_channel,
    standard_interceptors,
)
from posttrain.rpc.healthcheck import check
from posttrain.v1 import registry_pb2, registry_pb2_grpc
from services.evaluator.lookups import GrpcRegistry, own_credentials
from services.registry import servicer as registry_service
from services.registry.settings import RegistrySettings

CLIENT_CA_ENV = "POSTTRAIN_GRPC_CLIENT_TLS_CA_FILE"


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 (its own CA) and its key."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", f"/CN={name}",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


class TlsRegistry:
    def __init__(self, server: GrpcServer, key: str, cert: Path, other_cert: Path) -> None:
        self.server = server
        self.key = key
        self.cert = cert
        self.other_cert = other_cert
        self.target = f"localhost:{server.port}"

    def list_base_models(self, channel: grpc.Channel) -> registry_pb2.ListBaseModelsResponse:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        return stub.ListBaseModels(registry_pb2.ListBaseModelsRequest(), timeout=10)


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRegistry]:
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(tmp / "server", "localhost")
    other_cert, _ = self_signed(tmp / "other", "impostor")
    with pytest.MonkeyPatch.context() as env:
        # As a deployment sets them: the settings object reads them at start.
        env.setenv("POSTTRAIN_GRPC_TLS_CERT_FILE", str(cert))
        env.setenv("POSTTRAIN_GRPC_TLS_KEY_FILE", str(key))
        settings = RegistrySettings(state_dir=str(tmp))
    assert settings.grpc.tls_cert_file == str(cert)
    engine = create_db_engine(f"sqlite:///{tmp / 'registry.sqlite3'}")
    apply_migrations(engine, "auth", AUTH_MIGRATIONS)
    keys = ApiKeyStore(engine)
    admin = keys.create_key("admin", ["admin"], "acme")
    server = GrpcServer(
        GrpcServerSettings(**{**settings.grpc.model_dump(), "grace_seconds": 0}),
        registry_service.register(settings, engine),
        service_names=[registry_service.SERVICE_NAME],
        interceptors=standard_interceptors(keys),
        port=0,
        host="127.0.0.1",
    )
    server.start()
    try:
        yield TlsRegistry(server, admin, cert, other_cert)
    finally:
        server.stop(grace=0)
        engine.dispose()


@pytest.fixture(autouse=True)
def no_client_tls_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TLS_CA_FILE", "TLS", "TLS_SERVER_NAME"):
        monkeypatch.delenv(f"POSTTRAIN_GRPC_CLIENT_{name}", raising=False)


def test_a_client_trusting_the_servers_ca_gets_answers(tls_registry: TlsRegistry) -> None:
    assert tls_registry.server.tls
    with make_channel(
        tls_registry.target, api_key=tls_registry.key, tls_ca_file=str(tls_registry.cert)
    ) as channel:
        assert tls_registry.list_base_models(channel).models == []
    assert check(tls_registry.target, tls_ca_file=str(tls_registry.cert)) == "SERVING"


def test_a_plaintext_client_is_refused(tls_registry: TlsRegistry) -> None:
    with make_channel(tls_registry.target, api_key=tls_registry.key) as channel:
        with pytest.raises(grpc.RpcError) as err:
            tls_registry.list_base_models(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_trusting_another_ca_is_refused(tls_registry: TlsRegistry) -> None:
    with make_channel(
        tls_registry.target, api_key=tls_registry.key, tls_ca_file=str(tls_registry.other_cert)
    ) as channel:
        with pytest.raises(grpc.RpcError) as err:
            tls_registry.list_base_models(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_name_the_certificate_does_not_hold_is_refused(tls_registry: TlsRegistry) -> None:
    with make_channel(
        tls_registry.target,
        api_key=tls_registry.key,
        tls_ca_file=str(tls_registry.cert),
        tls_server_name="registry.example.com",
    ) as channel:
        with pytest.raises(grpc.RpcError) as err:
            tls_registry.list_base_models(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_service_to_service_clients_follow_the_client_setting(
    tls_registry: TlsRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The evaluator's registry lookup, built as the evaluator builds it (a target, no TLS
    arguments): plaintext without the setting, TLS with it."""
    credentials = own_credentials(tls_registry.key)
    plaintext = GrpcRegistry(tls_registry.target, timeout_s=5).bound(credentials)
    with pytest.raises(Exception, match="(?i)unavailable|registry"):
        plaintext.list_aliases("acme")

    monkeypatch.setenv(CLIENT_CA_ENV, str(tls_registry.cert))
    secured = GrpcRegistry(tls_registry.target, timeout_s=5).bound(credentials)
    assert secured.list_aliases("acme") == []


def test_an_unreadable_ca_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(ValueError, match="tls_ca_file .*no-such-ca.pem.* cannot be read"):
        make_channel("localhost:1", tls_ca_file=str(missing))


def test_a_missing_server_certificate_is_a_clear_error(tmp_path: Path) -> None:
    settings = GrpcServerSettings(
        tls_cert_file=str(tmp_path / "absent.crt"), tls_key_file=str(tmp_path / "absent.key")
    )
    with pytest.raises(ValueError, match="tls_key_file .*absent.key.* cannot be read"):
        GrpcServer(settings, [], service_names=[], port=0, host="127.0.0.1")
