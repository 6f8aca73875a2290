"""The gateway's background side: the deployment.requested consumer (thin shell over
posttrain.gateway's DeploymentController), the reconciler that reloads models Triton
lost, and the buffered event publisher. (service_main serves /metrics.)

deployment.requested is idempotent twice over: the consumer skips an event id it has
handled, and the controller answers a deployment id it has handled from its row, without
touching Triton again (a redelivery under a new event id).
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from posttrain.events import EventRuntime, HandlerContext, PoisonEvent, ReceivedEvent, topics
from posttrain.gateway import DeploymentController, DeploymentRefused
from posttrain.v1 import events_pb2
from services.gateway.app import build_app
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


def deployment_handler(controller: DeploymentController):
    def on_deployment_requested(event: ReceivedEvent, ctx: HandlerContext) -> None:
        payload = event.payload()
        if not isinstance(payload, events_pb2.DeploymentRequested):
            raise PoisonEvent(
                f"{event.topic} carries {type(payload).__name__}, expected DeploymentRequested"
            )
        try:
            controller.handle(ctx.session, payload, ctx.emit)
        except DeploymentRefused as exc:  # no deployment id: nothing to answer to
            raise PoisonEvent(str(exc)) from exc

    return on_deployment_requested


class Reconciler:
    """Loads the models routes point at but Triton does not serve (after a Triton
    restart), at start and every `interval_s` (0 = at start only)."""

    def __init__(self, controller: DeploymentController, engine: Engine, interval_s: float):
        self.controller = controller
        self.engine = engine
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> list[str]:
        with Session(self.engine) as session:
            return self.controller.reconcile(session)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # noqa: BLE001 - Triton or the DB away: next round
                log.warning("reconcile failed: %s", exc)
            if self.interval_s <= 0 or self._stop.wait(self.interval_s):
                return

    def start(self) -> Reconciler:
        self._thread = threading.Thread(target=self._run, name="gateway-reconcile", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)


def workers(settings: GatewaySettings, engine: Engine) -> list:
    app = build_app(settings, engine)
    return [
        app.gateway.records,  # stopped last: writes the records still pending
        *([app.grader] if app.grader is not None else []),  # stopped before the records
        app.events,
        EventRuntime(
            settings.kafka,
            engine,
            service_name=settings.service_name,
            handlers={topics.DEPLOYMENT_REQUESTED: deployment_handler(app.controller)},
            group_id=settings.consumer_group,
        ),
        Reconciler(app.controller, engine, settings.reconcile_interval_s),
    ]
