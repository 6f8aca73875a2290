"""Settings of the evaluator service, from POSTTRAIN_* environment variables."""

from pydantic import Field

from posttrain.rpc import RpcServiceSettings


class EvaluatorSettings(RpcServiceSettings):
    service_name: str = Field("evaluator", description="name in logs, events and metrics")
