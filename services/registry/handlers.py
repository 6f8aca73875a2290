"""The registry's event handlers: thin shells over posttrain.registry, one per topic.

training.completed   -> register the model version, emit model.registered
evaluation.completed -> record the release-gate verdict (and a lineage edge)
deployment.completed -> mark the deployment live or failed (and supersede older ones)

Each runs in the consumer's transaction and is idempotent twice over: the consumer skips
an event id it has handled, and the core skips a training job, report or deployment it
has already recorded (a redelivery under a new event id). An event the registry can
never accept (unknown or mismatched base model, unknown model version, missing fields)
is not retried: the refusal is written to the audit log (action "<topic>.refused") and
the record goes to <topic>.dlq with the reason. Register the missing base model, then
replay it from there.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine

from posttrain.events import EventRuntime, HandlerContext, PoisonEvent, ReceivedEvent, topics
from posttrain.registry import audit, deployments, gate, versions
from posttrain.rpc.errors import FailedPrecondition, InvalidArgument, NotFound, ServiceError
from posttrain.v1 import events_pb2
from services.registry.settings import RegistrySettings

log = logging.getLogger(__name__)

# Refusals that no retry can fix; anything else (a lost race, the database away) is retried.
REFUSALS = (InvalidArgument, FailedPrecondition, NotFound)


def on_training_completed(event: ReceivedEvent, ctx: HandlerContext) -> None:
    payload = _payload(event, events_pb2.TrainingCompleted)
    producer = event.envelope().producer or "unknown"
    try:
        versions.register_from_training(
            ctx.session,
            payload,
            produced_by=f"{producer} (job {payload.job_id})",
            emit=ctx.emit,
        )
    except REFUSALS as exc:
        _refuse(event, ctx, exc, subject=f"training_job:{payload.job_id}", tenant=payload.tenant)


def on_evaluation_completed(event: ReceivedEvent, ctx: HandlerContext) -> None:
    payload = _payload(event, events_pb2.EvaluationCompleted)
    producer = event.envelope().producer or "unknown"
    try:
        gate.record_evaluation(
            ctx.session, payload, actor=f"{producer} (report {payload.report_id})"
        )
    except REFUSALS as exc:
        _refuse(event, ctx, exc, subject=f"evaluation:{payload.report_id}", tenant="")


def on_deployment_completed(event: ReceivedEvent, ctx: HandlerContext) -> None:
    payload = _payload(event, events_pb2.DeploymentCompleted)
    producer = event.envelope().producer or "unknown"
    row = deployments.record_result(ctx.session, payload, actor=producer)
    if row is None:
        # The serving layer may deploy things on its own (experiments): not ours to track.
        log.info("deployment %r was not requested by the registry; ignored", payload.deployment_id)


HANDLERS = {
    topics.TRAINING_COMPLETED: on_training_completed,
    topics.EVALUATION_COMPLETED: on_evaluation_completed,
    topics.DEPLOYMENT_COMPLETED: on_deployment_completed,
}


def event_workers(settings: RegistrySettings, engine: Engine) -> list[EventRuntime]:
    """The outbox relay and the consumer group, run beside the gRPC server."""
    return [
        EventRuntime(
            settings.kafka,
            engine,
            service_name=settings.service_name,
            handlers=HANDLERS,
            group_id=settings.consumer_group,
        )
    ]


def _payload(event: ReceivedEvent, expected: type):
    payload = event.payload()
    if not isinstance(payload, expected):
        raise PoisonEvent(
            f"{event.topic} carries {type(payload).__name__}, expected {expected.__name__}"
        )
    return payload


def _refuse(
    event: ReceivedEvent, ctx: HandlerContext, exc: ServiceError, *, subject: str, tenant: str
) -> None:
    reason = f"{type(exc).__name__}: {exc.message}"
    log.warning("refused %s from %s: %s", event.topic, event.dedupe_key(), reason)
    audit.record(
        ctx.session,
        actor="registry",
        action=f"{event.topic}.refused",
        subject=subject[:400],
        tenant=tenant[:200] or None,
        reason=reason,
        details={"event_id": event.dedupe_key(), "topic": event.topic, "offset": event.offset},
    )
    ctx.dead_letter(reason)
