"""The registry core: the system of record for what exists and what is live.

Base models (base_models), model versions registered from training.completed
(versions), release-gate verdicts from evaluation.completed (gate), stages as aliases
with promotion, rollback and optimistic concurrency (aliases), deployments asked of the
serving layer (deployments), the lineage graph (lineage) and the audit log (audit).

Every function takes the caller's SQLAlchemy Session and changes state only inside it;
events are staged through an `emit` callable (the outbox), so a change and its event
commit together. Refusals are posttrain.rpc.errors exceptions (or subclasses in
registry.errors) that say what is wrong and what to do. This package must never import
gRPC or Kafka: services/registry is the shell that does.
"""

from posttrain.registry.tables import REGISTRY_MIGRATIONS

__all__ = ["REGISTRY_MIGRATIONS"]
