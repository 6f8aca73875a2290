"""Prometheus metrics of the registry (prometheus_client's default registry; the service
exposes them on settings.metrics_port)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter

from posttrain.rpc.errors import ServiceError

ALIAS_CHANGES = Counter(
    "posttrain_registry_alias_changes_total",
    "promotions and rollbacks, by stage and outcome (ok, or the refusal's status code)",
    ["action", "stage", "outcome"],
)


@contextmanager
def alias_change(action: str, stage: str) -> Iterator[None]:
    """Counts the block as one `action` (promote, rollback) on `stage`, by how it ended."""
    try:
        yield
    except ServiceError as exc:
        ALIAS_CHANGES.labels(action, stage, exc.code.name).inc()
        raise
    except Exception:
        ALIAS_CHANGES.labels(action, stage, "error").inc()
        raise
    ALIAS_CHANGES.labels(action, stage, "ok").inc()
