"""The consumer's metrics and log context against the real broker: the lag gauge counts
records not yet handled and drops to 0 once they are; failed attempts and outcomes are
counted; a handler runs under the correlation id of its event."""

from __future__ import annotations

import logging
import uuid

from conftest import run_until
from prometheus_client import REGISTRY
from test_consumer import _consumer, _record_effect

from posttrain.correlation import current_correlation_id
from posttrain.events import make_envelope, topics
from posttrain.rpc.logs import ContextFilter
from posttrain.v1 import events_pb2


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_lag_failures_and_correlation_of_a_consumer_group(bus, caplog):
    correlation_ids = [f"change-{i}" for i in range(3)]
    for i, cid in enumerate(correlation_ids):  # one aggregate: one partition, in order
        env = make_envelope(
            topics.DATASET_APPROVED,
            events_pb2.DatasetApproved(dataset="support", version=f"v{i}"),
            producer="test",
            aggregate_id="support",
            correlation_id=cid,
        )
        bus.producer.send_envelope(bus.topic, env)
    group = f"g-{uuid.uuid4().hex[:8]}"
    seen: list[tuple[str | None, float]] = []  # (correlation id, lag) at each handler call

    def handler(event, ctx):
        lag = _sample(
            "posttrain_events_consumer_lag",
            group=group,
            topic=bus.topic,
            partition=str(event.partition),
        )
        seen.append((current_correlation_id(), lag))
        logging.getLogger("tests.events.handler").info("handling %s", event.offset)
        if len(seen) == 1:
            raise ConnectionError("database blip")  # retried once
        _record_effect(event, ctx)

    consumer = _consumer(bus, handler, group=group, lag_interval_s=0)
    caplog.set_level(logging.INFO, logger="tests.events.handler")
    context_filter = ContextFilter("test")
    caplog.handler.addFilter(context_filter)  # pytest reuses this handler: removed below
    try:
        run_until(consumer, lambda: bus.effect_count() == 3)
        consumer.poll_once(timeout_ms=300)  # measures again, after the commit
        lags = {
            tp.partition: _sample(
                "posttrain_events_consumer_lag",
                group=group,
                topic=tp.topic,
                partition=str(tp.partition),
            )
            for tp in consumer.assignment()
        }
    finally:
        consumer.close()
        caplog.handler.removeFilter(context_filter)

    # Measured before the poll's records were handled: all three were outstanding.
    assert seen[0] == ("change-0", 3.0)
    assert [cid for cid, _ in seen] == ["change-0", "change-0", "change-1", "change-2"]
    assert sorted(lags) == [0, 1] and set(lags.values()) == {0.0}
    assert _sample("posttrain_events_failed_total", group=group, topic=bus.topic) == 1
    handled = _sample(
        "posttrain_events_handled_total", group=group, topic=bus.topic, outcome="handled"
    )
    assert handled == 3
    # Its log lines carry them too (through the filter configure_logging installs).
    lines = [r for r in caplog.records if r.name == "tests.events.handler"]
    assert [(r.getMessage(), r.correlation_id) for r in lines] == [
        ("handling 0", "change-0"),
        ("handling 0", "change-0"),
        ("handling 1", "change-1"),
        ("handling 2", "change-2"),
    ]
    # A closed consumer reports no lag any more (another member owns the partitions).
    assert (
        REGISTRY.get_sample_value(
            "posttrain_events_consumer_lag", {"group": group, "topic": bus.topic, "partition": "0"}
        )
        is None
    )
