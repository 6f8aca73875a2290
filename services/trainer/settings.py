"""Settings of the trainer service, from POSTTRAIN_* environment variables."""

from pydantic import Field

from posttrain.rpc import RpcServiceSettings


class TrainerSettings(RpcServiceSettings):
    service_name: str = Field("trainer", description="name in logs, events and metrics")
