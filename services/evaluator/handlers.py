"""The evaluator's event side: model.registered -> an evaluation on the configured suite,
recorded with its evaluation.completed in the consumer's transaction.

Idempotent twice over: the consumer skips an event id it has handled, and the evaluator
finds the report already recorded for (model version, suite version, seed), so the same
version announced again under a new event id adds nothing. An event that does not
parse, or describes no model (no id, tenant or artifacts), is a PoisonEvent: straight to
model.registered.dlq with the reason. A model that can't be loaded is not an event
problem: it gets a FAIL report ("model could not be loaded: ..."). Infrastructure
trouble (S3, the registry away) raises and is retried, then dead-lettered.
"""

from __future__ import annotations

import time

from posttrain.evaluator import (
    TRIGGER_EVENT,
    EvaluationRequest,
    Evaluator,
    ModelUnderTest,
    Registry,
    metrics,
)
from posttrain.events import HandlerContext, PoisonEvent, ReceivedEvent
from posttrain.faults import crash_point
from posttrain.v1 import events_pb2


def on_model_registered(
    evaluator: Evaluator, registry: Registry, event: ReceivedEvent, ctx: HandlerContext
) -> None:
    payload = event.payload()
    if not isinstance(payload, events_pb2.ModelRegistered):
        raise PoisonEvent(
            f"{event.topic} carries {type(payload).__name__}, expected ModelRegistered"
        )
    try:
        model = ModelUnderTest.from_registered(payload)
    except ValueError as exc:
        raise PoisonEvent(str(exc)) from None
    envelope = event.envelope()
    started = time.perf_counter()
    outcome = evaluator.evaluate(
        EvaluationRequest(
            model,
            trigger=TRIGGER_EVENT,
            requested_by=f"{envelope.producer or 'unknown'} (event {envelope.event_id})",
        ),
        registry,
    )
    crash_point("evaluator.mid_evaluation")  # evaluated, nothing recorded
    row, created = evaluator.record(
        ctx.session,
        lambda event_type, message, aggregate: ctx.emit(
            event_type, message, aggregate_id=aggregate
        ),
        outcome,
    )
    if created:
        metrics.observe(TRIGGER_EVENT, row.verdict, time.perf_counter() - started)
