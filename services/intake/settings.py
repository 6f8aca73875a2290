"""Settings of the intake service, from POSTTRAIN_* environment variables."""

from pydantic import Field

from posttrain.rpc import RpcServiceSettings


class IntakeSettings(RpcServiceSettings):
    service_name: str = Field("intake", description="name in logs, events and metrics")
