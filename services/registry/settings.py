"""Settings of the registry service, from POSTTRAIN_* environment variables."""

from pydantic import Field

from posttrain.rpc import RpcServiceSettings


class RegistrySettings(RpcServiceSettings):
    service_name: str = Field("registry", description="name in logs, events and metrics")
    consumer_group: str = Field(
        "registry",
        description="Kafka consumer group for training.completed, evaluation.completed and "
        "deployment.completed (POSTTRAIN_CONSUMER_GROUP)",
    )
