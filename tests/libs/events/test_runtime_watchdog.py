"""The runtime's assignment watchdog (pure logic): a consumer that had partitions and lost
them for longer than the stall time is replaced; one that never had any is left alone.
The broker restart that needs it runs for real in tests/faults/."""

from __future__ import annotations

import pytest

from posttrain.events import runtime
from posttrain.events.runtime import ConsumerStalled, _AssignmentWatchdog

PARTS = {("training.completed", 0)}


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(runtime.time, "monotonic", lambda: now[0])
    return now


def test_lost_partitions_for_longer_than_the_stall_raise(clock):
    dog = _AssignmentWatchdog(stall_s=30)
    dog.check(PARTS, "registry")
    dog.check(set(), "registry")
    clock[0] += 29
    dog.check(set(), "registry")
    clock[0] += 2
    with pytest.raises(ConsumerStalled, match="group registry has had no partitions for 30s"):
        dog.check(set(), "registry")


def test_partitions_back_in_time_reset_the_clock(clock):
    dog = _AssignmentWatchdog(stall_s=30)
    dog.check(PARTS, "g")
    dog.check(set(), "g")
    clock[0] += 20
    dog.check(PARTS, "g")
    dog.check(set(), "g")
    clock[0] += 20
    dog.check(set(), "g")  # 20 s since it lost them again: not yet


@pytest.mark.parametrize("stall_s", [30, 0])
def test_a_member_that_never_had_partitions_or_a_disabled_dog_never_raises(clock, stall_s):
    dog = _AssignmentWatchdog(stall_s=stall_s)
    if stall_s == 0:
        dog.check(PARTS, "g")
    for _ in range(5):
        dog.check(set(), "g")
        clock[0] += 100
