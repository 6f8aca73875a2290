"""Settings of the gateway service, from POSTTRAIN_* environment variables.

The two folders are shared with tritonserver and must have the same paths in both
processes (containers): Triton reads config.pbtxt, model.py, the base model folders and
adapter directories that the gateway writes there. Locally `posttrain stack up` runs
Triton on .posttrain/stack/triton/models (the default below); in docker-compose and
Kubernetes mount one volume at the same path into the gateway and Triton (README of
posttrain.gateway).
"""

from pydantic import Field, SecretStr

from posttrain.rpc import RpcServiceSettings


class GatewaySettings(RpcServiceSettings):
    service_name: str = Field("gateway", description="name in logs, events and metrics")
    consumer_group: str = Field(
        "gateway", description="Kafka consumer group for deployment.requested"
    )

    # ---- deployments (the controller)
    triton_model_repository: str = Field(
        ".posttrain/stack/triton/models",
        description="Triton's --model-repository, written by the gateway "
        "(POSTTRAIN_TRITON_MODEL_REPOSITORY); same path in both processes",
    )
    model_cache_dir: str = Field(
        "",
        description="downloaded base models, adapters and merged models, which Triton reads "
        "too; empty = <triton_model_repository>/.posttrain-cache",
    )
    streaming_models: bool = Field(
        False,
        description="also load a decoupled twin of each model for GenerateStream (token by "
        "token; costs a second copy of the weights); off = a stream answers in one chunk",
    )
    torch_threads: int = Field(0, description="torch threads per Triton model; 0 = default")
    model_device: str = Field("auto", description="cpu | cuda | cuda:N | auto")
    model_dtype: str = Field("auto", description="float32 | bfloat16 | float16 | auto")
    adapter_cache_size: int = Field(8, description="adapters in memory per base model (LRU)")
    max_batch_size: int = Field(16, description="rows per batched generation in Triton")
    model_load_timeout_s: float = Field(600.0, description="one Triton model load")
    deploy_triton_wait_s: float = Field(
        60.0, description="how long a deployment waits for an unreachable Triton, then fails"
    )
    reconcile_interval_s: float = Field(
        30.0,
        description="how often models that routes use but Triton lost (a Triton restart) "
        "are loaded again; 0 = only at start",
    )

    # ---- requests
    max_request_bytes: int = Field(65536, description="largest prompt or conversation (UTF-8)")
    max_tokens_cap: int = Field(1024, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(128, description="max_tokens when a request sends 0")
    default_timeout_s: float = Field(
        120.0, description="Triton timeout without a caller deadline; also the ceiling"
    )
    rate_limit_rps: float = Field(
        0.0, description="requests per second per tenant (token bucket); 0 = no limit"
    )
    rate_limit_burst: int = Field(20, description="token bucket size per tenant")
    tenant_rate_limits: dict[str, float] = Field(
        default_factory=dict,
        description='per-tenant requests per second, JSON: {"acme": 50}; overrides '
        "rate_limit_rps for those tenants",
    )
    route_cache_s: float = Field(
        1.0, description="how long this replica reuses a route lookup (other replicas' changes)"
    )
    cost_per_1k_prompt_tokens: float = Field(
        0.0001, description="cost of 1000 prompt tokens in the report (set your own)"
    )
    cost_per_1k_completion_tokens: float = Field(
        0.0004, description="cost of 1000 completion tokens in the report (set your own)"
    )
    user_key_secret: SecretStr = Field(
        SecretStr(""),
        description="HMAC key of the user-key hashes in logs and events; set it where user "
        "keys are guessable (emails)",
    )

    # ---- experiments
    experiment_alpha: float = Field(0.05, description="significance level of the report")
    experiment_min_sample: int = Field(
        200, description="records with feedback per arm before the report gives a verdict"
    )
    guardrail_min_requests: int = Field(
        100, description="reviewed requests an arm needs before the guardrail may stop it"
    )
    event_buffer_size: int = Field(
        10000,
        description="inference.logged / feedback.recorded held while Kafka is away "
        "(oldest dropped beyond it)",
    )
