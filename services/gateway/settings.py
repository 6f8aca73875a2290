"""Settings of the gateway service, from POSTTRAIN_* environment variables.

The two folders are shared with tritonserver and must have the same paths in both
processes (containers): Triton reads config.pbtxt, model.py, the base model folders and
adapter directories that the gateway writes there. Locally `posttrain stack up` runs
Triton on .posttrain/stack/triton/models (the default below); in docker-compose and
Kubernetes mount one volume at the same path into the gateway and Triton (README of
posttrain.gateway).
"""

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from posttrain.evaluation.judge import JudgeConfig
from posttrain.rpc import RpcServiceSettings


class ExperimentJudgeSettings(BaseSettings):
    """The judge that grades sampled experiment requests (POSTTRAIN_EXPERIMENT_JUDGE_*).
    Prompts and answers are held in memory for grading only, never stored."""

    model_config = SettingsConfigDict(env_prefix="POSTTRAIN_EXPERIMENT_JUDGE_", extra="ignore")

    kind: str = Field(
        "none",
        description="none (no judge scores) | rule (token F1 with the last user message, no "
        "model: tests and demos) | openai (an OpenAI-compatible endpoint) | triton (a model "
        "served by Triton)",
    )
    rubric: str = Field("", description="what the judge grades against; empty = helpfulness")
    sample_rate: float = Field(
        0.1, ge=0.0, le=1.0, description="share of experiment requests graded (0..1)"
    )
    queue_size: int = Field(
        1000, ge=1, description="requests waiting for the judge; beyond it dropped (counted)"
    )
    model: str = Field("", description="openai: the model name; triton: its version (a label)")
    base_url: str = Field("", description="openai: base URL including /v1")
    api_key_env: str = Field(
        "", description="openai: the environment variable that holds the endpoint's API key"
    )
    timeout_s: float = Field(60.0, description="openai, triton: per-request timeout")
    triton_url: str = Field("", description="triton: gRPC host:port; empty = the gateway's")
    triton_model: str = Field("", description="triton: the judge's LLM model name in Triton")
    lora_name: str = Field("", description="triton: its adapter; empty = the model itself")
    max_tokens: int = Field(256, description="tokens the judge may write per reply")

    def judge_config(self, triton_url: str) -> JudgeConfig:
        """The judge's config; `triton_url` (the gateway's Triton) unless set here."""
        return JudgeConfig(
            kind=self.kind,
            model=self.model,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            timeout_s=self.timeout_s,
            triton_url=self.triton_url or triton_url,
            triton_model=self.triton_model,
            lora_name=self.lora_name,
            max_tokens=self.max_tokens,
        )


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
    experiment_judge: ExperimentJudgeSettings = Field(default_factory=ExperimentJudgeSettings)
    event_buffer_size: int = Field(
        10000,
        description="inference.logged / feedback.recorded held while Kafka is away "
        "(oldest dropped beyond it)",
    )
