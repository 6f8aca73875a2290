"""Promotions and rollbacks are counted by stage and outcome, refusals by status code."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from posttrain.registry.errors import GateNotPassed
from posttrain.registry.metrics import alias_change


def _count(action: str, outcome: str) -> float:
    labels = {"action": action, "stage": "production", "outcome": outcome}
    return REGISTRY.get_sample_value("posttrain_registry_alias_changes_total", labels) or 0.0


def test_alias_changes_are_counted_by_outcome():
    before = {o: _count("promote", o) for o in ("ok", "FAILED_PRECONDITION", "error")}
    with alias_change("promote", "production"):
        pass
    with pytest.raises(GateNotPassed), alias_change("promote", "production"):
        raise GateNotPassed("mv-1", "support@production", ["no PASS verdict"])
    with pytest.raises(RuntimeError), alias_change("promote", "production"):
        raise RuntimeError("database away")
    after = {o: _count("promote", o) for o in before}
    assert {o: after[o] - before[o] for o in after} == {
        "ok": 1,
        "FAILED_PRECONDITION": 1,
        "error": 1,
    }
