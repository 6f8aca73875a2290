"""Settings of the intake service, from POSTTRAIN_* environment variables."""

from pydantic import Field

from posttrain.rpc import RpcServiceSettings


class IntakeSettings(RpcServiceSettings):
    service_name: str = Field("intake", description="name in logs, events and metrics")
    auto_approve_unregulated: bool = Field(
        True,
        description="approve versions of non-regulated datasets on upload; regulated ones "
        "always wait for a second person (four eyes)",
    )
    spool_dir: str = Field(
        "",
        description="temporary files of uploads in flight; empty = <state_dir>/spool. One per "
        "process: what a killed process left there is removed at start",
    )
    registry_target: str = Field(
        "127.0.0.1:50054",
        description="registry gRPC address, for the tokenizer of a named base model",
    )
    upload_chunk_limit_bytes: int = Field(
        4 * 1024 * 1024, description="largest accepted chunk message in UploadDataset"
    )
