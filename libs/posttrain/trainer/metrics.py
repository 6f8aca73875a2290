"""Prometheus metrics of the training workers (prometheus_client's default registry; the
service exposes them on settings.metrics_port). A process trains one job at a time, so
the throughput gauge is the current job's."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

TOKENS_PER_SECOND = Gauge(
    "posttrain_trainer_tokens_per_second",
    "training throughput of the running job at its last step (0 when idle)",
)
STEPS = Counter("posttrain_trainer_steps_total", "optimizer steps trained", ["method"])
JOBS = Counter(
    "posttrain_trainer_jobs_total",
    "job attempts by how they ended: succeeded, failed, cancelled, released (handed back)",
    ["state"],
)
