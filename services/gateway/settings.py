"""Settings of the gateway service, from POSTTRAIN_* environment variables."""

from pydantic import Field

from posttrain.rpc import RpcServiceSettings


class GatewaySettings(RpcServiceSettings):
    service_name: str = Field("gateway", description="name in logs, events and metrics")
