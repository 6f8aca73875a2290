"""Settings of the evaluator service, from POSTTRAIN_* environment variables (the judge's
from POSTTRAIN_JUDGE_*)."""

from dataclasses import replace

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from posttrain.config import SERVICE_PORTS
from posttrain.evaluation import CalibrationPolicy, JudgeConfig, Prices
from posttrain.evaluator import EvaluatorConfig
from posttrain.evaluator.serving import TritonOptions
from posttrain.rpc import RpcServiceSettings


class JudgeSettings(BaseSettings):
    """Which judge grades judge-based metrics, and when it is trusted (POSTTRAIN_JUDGE_*)."""

    model_config = SettingsConfigDict(env_prefix="POSTTRAIN_JUDGE_", extra="ignore")

    kind: str = Field(
        "rule",
        description="rule (token F1 vs the reference, no model) | model (a registered model "
        "version, loaded here) | openai (an OpenAI-compatible endpoint) | triton (a model "
        "served by Triton)",
    )
    model: str = Field("", description="model: the model version id; openai: the model name")
    base_url: str = Field("", description="openai: base URL including /v1")
    api_key_env: str = Field(
        "", description="openai: the environment variable that holds the endpoint's API key"
    )
    timeout_s: float = Field(60.0, description="openai, triton: per-request timeout")
    triton_url: str = Field("", description="triton: gRPC host:port; empty = triton.grpc_url")
    triton_model: str = Field("", description="triton: the LLM model's name in Triton")
    lora_name: str = Field("", description="triton: its adapter; empty = the model itself")
    max_tokens: int = Field(256, description="tokens the judge may write per reply")
    seed: int = Field(0, description="seed sent to the judge model")
    min_anchors: int = Field(10, description="fewer anchor items: the judge is not trusted")
    min_agreement: float = Field(0.8, description="least within-one agreement with the humans")
    min_kappa: float = Field(0.4, description="least quadratic-weighted Cohen's kappa")

    def judge_config(self) -> JudgeConfig:
        return JudgeConfig(
            kind=self.kind,
            model=self.model,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            timeout_s=self.timeout_s,
            max_tokens=self.max_tokens,
            seed=self.seed,
            triton_url=self.triton_url,
            triton_model=self.triton_model,
            lora_name=self.lora_name,
        )

    def calibration_policy(self) -> CalibrationPolicy:
        return CalibrationPolicy(
            min_anchors=self.min_anchors, min_agreement=self.min_agreement, min_kappa=self.min_kappa
        )


class EvaluatorSettings(RpcServiceSettings):
    service_name: str = Field("evaluator", description="name in logs, events and metrics")
    consumer_group: str = Field("evaluator", description="Kafka consumer group of model.registered")

    # What a model.registered is evaluated on.
    suite: str = Field("support", description="suite name; the shipped default is 'support'")
    suite_version: str = Field("", description="suite version (or 8+ char prefix); empty = latest")
    seed: int = Field(0, description="generation seed of evaluations that do not name one")
    max_cases_per_tag: int = Field(
        0,
        description="evaluate only the first N cases of each tag (0 = all): for demos on a "
        "few CPU cores; the cut suite gets its own version",
    )
    price_prompt_per_1k: float = Field(0.0002, description="price of 1K prompt tokens")
    price_completion_per_1k: float = Field(0.0006, description="price of 1K completion tokens")
    price_currency: str = Field("USD", description="what the prices are in; only a label")
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    review_sample_size: int = Field(5, description="outputs of each report sampled for review")
    evaluate_production_baseline: bool = Field(
        True,
        description="when the production version has no report on the suite version, "
        "evaluate it first so the regression rules apply (off: skip them, with a note)",
    )

    # The registry: model versions, base model weights, production aliases.
    registry_target: str = Field(
        f"127.0.0.1:{SERVICE_PORTS['registry']}", description="registry host:port"
    )
    registry_api_key: str = Field(
        "",
        description="the evaluator's own key for model.registered (RPCs forward the caller's): "
        "a key of the registry's api_keys that may read every tenant's versions and aliases "
        "(admin) in a multi-tenant install; empty = no key",
    )
    upstream_timeout_s: float = Field(10.0, description="deadline of each registry call")

    # The local runtime.
    cache_dir: str = Field("", description="downloaded models by sha256; empty = <state_dir>/cache")
    device: str = Field("cpu", description="torch device of the evaluated model: cpu | cuda")
    dtype: str = Field("", description="torch dtype name (bfloat16...); empty = float32")
    batch_size: int = Field(8, description="generation batch size")
    max_seq_len: int = Field(4096, description="longest prompt + reply in tokens")
    torch_threads: int = Field(0, description="torch CPU threads; 0 = torch's default")

    # Generating through Triton instead (at triton.grpc_url, POSTTRAIN_TRITON_GRPC_URL).
    generator: str = Field(
        "local",
        description="local (transformers in this process) | triton (the evaluator loads the "
        "model into Triton and generates there; cache_dir must be at the same path for Triton)",
    )
    triton_model_repository: str = Field(
        ".posttrain/stack/triton/models",
        description="generator triton: Triton's --model-repository, same path in both processes",
    )
    triton_concurrency: int = Field(4, description="generator triton: requests in flight")
    triton_torch_threads: int = Field(0, description="generator triton: torch threads per model")
    serving_probe_requests: int = Field(
        0,
        description="> 0: time each candidate served through Triton as an adapter on its base "
        "and merged, on this many of the suite's prompts, one at a time (the report's serving "
        "section; the method comparison reads it); needs triton_model_repository",
    )
    serving_probe_max_new_tokens: int = Field(
        0, description="tokens each probe request generates at most; 0 = the suite's budget"
    )

    def evaluator_config(self) -> EvaluatorConfig:
        return EvaluatorConfig(
            suite=self.suite,
            suite_version=self.suite_version,
            seed=self.seed,
            max_cases_per_tag=self.max_cases_per_tag,
            prices=Prices(
                prompt_per_1k=self.price_prompt_per_1k,
                completion_per_1k=self.price_completion_per_1k,
                currency=self.price_currency,
            ),
            judge=replace(
                self.judge.judge_config(), triton_url=self.judge.triton_url or self.triton.grpc_url
            ),
            calibration=self.judge.calibration_policy(),
            review_sample_size=self.review_sample_size,
            evaluate_production_baseline=self.evaluate_production_baseline,
            batch_size=self.batch_size,
            max_seq_len=self.max_seq_len,
            generator=self.generator,
            triton=TritonOptions(
                url=self.triton.grpc_url,
                model_repository=self.triton_model_repository,
                concurrency=self.triton_concurrency,
                torch_threads=self.triton_torch_threads,
            ),
            serving_probe_requests=self.serving_probe_requests,
            serving_probe_max_new_tokens=self.serving_probe_max_new_tokens,
        )
