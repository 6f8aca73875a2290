"""Settings from environment variables, with local defaults that match `posttrain stack up`.

Each service builds one settings object (a subclass of ServiceSettings) at start-up and
passes pieces of it down; library code never reads the environment itself. Secrets have
no default here except the local stack's own development credentials.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Default ports of the embedded local stack (posttrain stack up). Overridable by env.
DEFAULT_KAFKA_PORT = 19092
DEFAULT_S3_PORT = 18333
DEFAULT_TRITON_GRPC_PORT = 18001
DEFAULT_TRITON_HTTP_PORT = 18000

# gRPC ports of the five services, in one place so compose, k8s and the CLI agree.
SERVICE_PORTS = {
    "intake": 50051,
    "trainer": 50052,
    "evaluator": 50053,
    "registry": 50054,
    "gateway": 50055,
}


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POSTTRAIN_KAFKA_", extra="ignore")

    bootstrap_servers: str = Field(
        f"127.0.0.1:{DEFAULT_KAFKA_PORT}", description="comma-separated host:port list"
    )
    security_protocol: str = Field("PLAINTEXT", description="PLAINTEXT | SSL | SASL_SSL ...")
    session_timeout_ms: int = Field(
        10000, description="consumer session timeout; low values make group joins fast"
    )
    heartbeat_interval_ms: int = Field(1000, description="consumer heartbeat interval")
    max_message_bytes: int = Field(8 * 1024 * 1024, description="largest event value")


class S3Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POSTTRAIN_S3_", extra="ignore")

    endpoint: str = Field(f"127.0.0.1:{DEFAULT_S3_PORT}", description="host:port of the S3 API")
    access_key: str = Field("posttrain", description="S3 access key")
    secret_key: str = Field("posttrain-local-secret", description="S3 secret key")
    secure: bool = Field(False, description="use https")
    region: str = Field("us-east-1", description="S3 region")
    bucket: str = Field("posttrain", description="bucket for datasets and artifacts")


class DatabaseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POSTTRAIN_DB_", extra="ignore")

    url: str = Field(
        "",
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; "
        "empty = embedded SQLite under the state directory",
    )


class TritonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POSTTRAIN_TRITON_", extra="ignore")

    grpc_url: str = Field(f"127.0.0.1:{DEFAULT_TRITON_GRPC_PORT}", description="KServe v2 gRPC")
    http_url: str = Field(f"127.0.0.1:{DEFAULT_TRITON_HTTP_PORT}", description="KServe v2 HTTP")


class GrpcServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POSTTRAIN_GRPC_", extra="ignore")

    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(0, description="0 = the service's default port from SERVICE_PORTS")
    max_message_bytes: int = Field(64 * 1024 * 1024, description="max gRPC message size")
    max_workers: int = Field(16, description="thread pool size")
    grace_seconds: float = Field(10.0, description="time in-flight RPCs get on shutdown")
    tls_cert_file: str = Field("", description="PEM server certificate; empty = plaintext")
    tls_key_file: str = Field("", description="PEM private key for tls_cert_file")
    auth_required: bool = Field(True, description="reject calls without a valid API key")


class GrpcClientSettings(BaseSettings):
    """How posttrain's gRPC clients (service to service, the CLI, the health check) reach
    a TLS server; read by make_channel when its caller gives no TLS arguments."""

    model_config = SettingsConfigDict(env_prefix="POSTTRAIN_GRPC_CLIENT_", extra="ignore")

    tls_ca_file: str = Field("", description="PEM CA bundle to trust; set = TLS")
    tls: bool = Field(False, description="TLS trusting the system CAs (no tls_ca_file)")
    tls_server_name: str = Field(
        "", description="name to check the server certificate against; empty = the host"
    )


class ServiceSettings(BaseSettings):
    """What every service needs; a service subclasses this and adds its own fields."""

    model_config = SettingsConfigDict(env_prefix="POSTTRAIN_", extra="ignore")

    service_name: str = Field("posttrain", description="name in logs, events and metrics")
    state_dir: str = Field(".posttrain", description="local state: SQLite, stack data, logs")
    log_level: str = Field("INFO", description="logging level")
    metrics_port: int = Field(0, description="Prometheus /metrics port; 0 = off")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    db: DatabaseSettings = Field(default_factory=DatabaseSettings)
    triton: TritonSettings = Field(default_factory=TritonSettings)
    grpc: GrpcServerSettings = Field(default_factory=GrpcServerSettings)

    def database_url(self) -> str:
        if self.db.url:
            return self.db.url
        return f"sqlite:///{self.state_dir}/{self.service_name}.sqlite3"

    def grpc_port(self) -> int:
        return self.grpc.port or SERVICE_PORTS.get(self.service_name, 50050)
