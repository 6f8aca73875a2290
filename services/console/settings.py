"""Settings of the web console, from POSTTRAIN_CONSOLE_* environment variables.

The services' addresses also fall back to the names the other services use
(POSTTRAIN_INTAKE_TARGET, ...), so one environment file serves them all.
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from posttrain.config import SERVICE_PORTS
from posttrain.console import ConsoleConfig, ServiceTargets


def _target(service: str) -> Any:
    return Field(
        f"127.0.0.1:{SERVICE_PORTS[service]}",
        validation_alias=AliasChoices(
            f"POSTTRAIN_CONSOLE_{service.upper()}_TARGET",
            f"POSTTRAIN_{service.upper()}_TARGET",
            f"{service}_target",
        ),
        description=f"{service} gRPC host:port",
    )


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="POSTTRAIN_CONSOLE_", extra="ignore", populate_by_name=True
    )

    host: str = Field("127.0.0.1", description="address the web server binds (0.0.0.0 in a pod)")
    port: int = Field(8080, description="HTTP(S) port of the console")
    intake_target: str = _target("intake")
    registry_target: str = _target("registry")
    trainer_target: str = _target("trainer")
    evaluator_target: str = _target("evaluator")
    gateway_target: str = _target("gateway")
    secret_key: str = Field(
        "",
        description="signs session cookies and CSRF tokens (at least 16 characters); empty = "
        "a random one per start (everyone signs in again after a restart). Keep it out of "
        "the repo: an env var from a secret",
    )
    tls_cert_file: str = Field("", description="serve HTTPS with this certificate (PEM)")
    tls_key_file: str = Field("", description="... and this private key (PEM)")
    secure_cookies: bool = Field(
        False,
        description="mark the session cookie Secure; on by itself with tls_cert_file, set it "
        "when a proxy in front terminates TLS",
    )
    grpc_tls_ca_file: str = Field("", description="call the services over TLS, trusting this CA")
    grpc_tls: bool = Field(False, description="call the services over TLS, trusting system CAs")
    rpc_timeout_s: float = Field(15.0, description="deadline of each call to a service")
    poll_interval_ms: int = Field(1000, description="how often a job's page asks for progress")
    session_idle_timeout_s: float = Field(8 * 3600.0, description="idle time before sign-out")
    log_level: str = Field("INFO", description="logging level")
    log_format: str = Field(
        "text",
        validation_alias=AliasChoices("POSTTRAIN_CONSOLE_LOG_FORMAT", "POSTTRAIN_LOG_FORMAT"),
        description="text | json",
    )

    def config(self, secret: bytes) -> ConsoleConfig:
        return ConsoleConfig(
            targets=ServiceTargets(
                intake=self.intake_target,
                registry=self.registry_target,
                trainer=self.trainer_target,
                evaluator=self.evaluator_target,
                gateway=self.gateway_target,
            ),
            secret=secret,
            secure_cookies=self.secure_cookies or bool(self.tls_cert_file),
            rpc_timeout_s=self.rpc_timeout_s,
            tls_ca_file=self.grpc_tls_ca_file or None,
            tls=self.grpc_tls,
            poll_interval_ms=self.poll_interval_ms,
            session_idle_timeout_s=self.session_idle_timeout_s,
        )
