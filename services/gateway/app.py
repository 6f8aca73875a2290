"""The gateway's parts, built once per process from its settings and shared by the
servicer and the background workers (a deployment that changes a route drops the
request path's route cache in the same process)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from posttrain.db import apply_migrations
from posttrain.events import EVENTS_MIGRATIONS
from posttrain.experiments import AnalysisConfig
from posttrain.gateway import (
    GATEWAY_MIGRATIONS,
    ControllerOptions,
    DeploymentController,
    ExperimentBook,
    ExperimentGrader,
    GatewayLimits,
    InferenceGateway,
    ServingLayout,
    TritonLLM,
    experiment_judge,
)
from posttrain.gateway.records import InferenceLog
from posttrain.storage import ArtifactStore
from services.gateway.publisher import BufferedEventPublisher
from services.gateway.settings import GatewaySettings


@dataclass
class GatewayApp:
    settings: GatewaySettings
    engine: Engine
    triton: TritonLLM
    store: ArtifactStore
    gateway: InferenceGateway
    experiments: ExperimentBook
    controller: DeploymentController
    events: BufferedEventPublisher
    grader: ExperimentGrader | None = None  # the experiment judge; None: not configured

    def close(self) -> None:
        """Grade and write what is pending, close the Triton channel, forget this app (tests,
        tools)."""
        if self.grader is not None:
            self.grader.stop()
        self.gateway.records.stop()
        self.triton.close()
        _APPS.pop((id(self.settings), id(self.engine)), None)


_APPS: dict[tuple[int, int], GatewayApp] = {}


def limits_of(settings: GatewaySettings) -> GatewayLimits:
    return GatewayLimits(
        max_request_bytes=settings.max_request_bytes,
        max_tokens_cap=settings.max_tokens_cap,
        default_max_tokens=settings.default_max_tokens,
        default_timeout_s=settings.default_timeout_s,
        rate_limit_rps=settings.rate_limit_rps,
        rate_limit_burst=settings.rate_limit_burst,
        tenant_rate_limits=settings.tenant_rate_limits,
        cost_per_1k_prompt_tokens=settings.cost_per_1k_prompt_tokens,
        cost_per_1k_completion_tokens=settings.cost_per_1k_completion_tokens,
        route_cache_s=settings.route_cache_s,
    )


def controller_options(settings: GatewaySettings) -> ControllerOptions:
    return ControllerOptions(
        streaming_models=settings.streaming_models,
        torch_threads=settings.torch_threads,
        device=settings.model_device,
        dtype=settings.model_dtype,
        adapter_cache_size=settings.adapter_cache_size,
        max_batch_size=settings.max_batch_size,
        default_max_tokens=settings.default_max_tokens,
        load_timeout_s=settings.model_load_timeout_s,
        triton_wait_s=settings.deploy_triton_wait_s,
    )


def experiment_grader(
    settings: GatewaySettings, engine: Engine, records: InferenceLog
) -> ExperimentGrader | None:
    """The experiment judge the settings name; None for kind "none". A judge that cannot
    be built (unknown kind, missing endpoint) stops the service at start."""
    judge = settings.experiment_judge
    if judge.kind == "none":
        return None
    return ExperimentGrader(
        engine,
        experiment_judge(judge.judge_config(settings.triton.grpc_url)),
        rubric=judge.rubric,
        sample_rate=judge.sample_rate,
        capacity=judge.queue_size,
        records=records,
        prompt_as_reference=judge.kind == "rule",
    )


def build_app(settings: GatewaySettings, engine: Engine) -> GatewayApp:
    """The parts for this (settings, engine), built on first use. No network call here:
    the service starts (and reports health) while Triton, S3 or Kafka are still coming up."""
    key = (id(settings), id(engine))
    if key in _APPS:
        return _APPS[key]
    apply_migrations(engine, "events", EVENTS_MIGRATIONS)
    apply_migrations(engine, "gateway", GATEWAY_MIGRATIONS)
    triton = TritonLLM(settings.triton.grpc_url)
    store = ArtifactStore.from_settings(settings.s3)
    events = BufferedEventPublisher(
        settings.kafka, producer_name=settings.service_name, capacity=settings.event_buffer_size
    )
    records = InferenceLog(engine)
    experiments = ExperimentBook(
        engine,
        store,
        analysis=AnalysisConfig(
            alpha=settings.experiment_alpha, min_sample=settings.experiment_min_sample
        ),
        guardrail_min_requests=settings.guardrail_min_requests,
        records=records,
    )
    gateway = InferenceGateway(
        engine,
        triton,
        experiments,
        limits_of(settings),
        events=events,
        records=records,
        grader=experiment_grader(settings, engine, records),
        user_key_secret=settings.user_key_secret.get_secret_value().encode(),
    )
    experiments.on_change = gateway.invalidate
    controller = DeploymentController(
        store,
        triton,
        ServingLayout.of(settings.triton_model_repository, settings.model_cache_dir),
        controller_options(settings),
        on_route_change=gateway.invalidate,
    )
    app = GatewayApp(
        settings, engine, triton, store, gateway, experiments, controller, events, gateway.grader
    )
    _APPS[key] = app
    return app
