"""The three ways a trainer process runs (see __main__): API and worker, API only,
worker only."""

from __future__ import annotations

import logging
import signal
import threading

import torch
from sqlalchemy import Engine

from posttrain.db import create_db_engine
from posttrain.events import EventRuntime
from posttrain.rpc import MetricsEndpoint, configure_logging, service_main
from services.trainer import comparisons
from services.trainer.servicer import SERVICE_NAME, migrate, register
from services.trainer.settings import TrainerSettings
from services.trainer.workers import WorkerRuntime

log = logging.getLogger(__name__)


def _worker(settings: TrainerSettings, engine: Engine) -> list[WorkerRuntime]:
    if settings.worker_torch_threads > 0:
        torch.set_num_threads(settings.worker_torch_threads)
    migrate(engine)
    return [WorkerRuntime(settings, engine)]


def _relay(settings: TrainerSettings, engine: Engine) -> list[EventRuntime]:
    return [EventRuntime(settings.kafka, engine, service_name=settings.service_name)]


def _register_with_comparisons(settings: TrainerSettings, engine: Engine) -> list:
    """TrainingService, and ComparisonService asking intake and the registry the same way."""
    entries = register(settings, engine)
    training = entries[0][1]
    return [
        *entries,
        comparisons.servicer_entry(settings, engine, training.datasets, training.base_models),
    ]


SERVICE_NAMES = [SERVICE_NAME, comparisons.SERVICE_NAME]


def run_all(settings: TrainerSettings) -> int:
    return service_main(
        settings,
        _register_with_comparisons,
        service_names=SERVICE_NAMES,
        workers=lambda s, e: [*_worker(s, e), comparisons.collector(s, e)],
    )


def run_api(settings: TrainerSettings) -> int:
    return service_main(
        settings,
        _register_with_comparisons,
        service_names=SERVICE_NAMES,
        workers=lambda s, e: [*_relay(s, e), comparisons.collector(s, e)],
    )


def run_worker(settings: TrainerSettings) -> int:
    """A worker with no gRPC server (but /metrics on settings.metrics_port, if set), until
    SIGTERM/SIGINT."""
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    engine = create_db_engine(settings.database_url())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    endpoint = None
    if settings.metrics_port:
        endpoint = MetricsEndpoint(settings.grpc.host, settings.metrics_port).start()
    try:
        (runtime,) = _worker(settings, engine)
        runtime.start()
        while not stop.wait(0.5):
            pass
        log.info("stopping training worker %s", runtime.worker_id)
        runtime.stop()
    finally:
        if endpoint is not None:
            endpoint.stop()
        engine.dispose()
    return 0
