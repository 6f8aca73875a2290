"""Crash points for the fault-injection suite (tests/faults/): `crash_point("name")` kills
this process with SIGKILL when POSTTRAIN_FAULT_CRASH_AT names that point, and does nothing
otherwise.

The points sit where a crash is most likely to lose or duplicate work: between a DB commit
and the event that announces it, between a publish and its "published" mark, between a
handled event and its Kafka offset commit. A test starts a service with the variable set,
waits for it to die there, and starts it again with the same environment:
POSTTRAIN_FAULT_MARKER_DIR makes each point fire once (a marker file per point), so the
restarted process goes past it.

Production cost: one dict lookup of an unset variable (read once, at import).
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

log = logging.getLogger(__name__)

CRASH_AT_ENV = "POSTTRAIN_FAULT_CRASH_AT"
MARKER_DIR_ENV = "POSTTRAIN_FAULT_MARKER_DIR"

# Comma-separated point names; empty in production.
_ARMED = frozenset(p.strip() for p in os.environ.get(CRASH_AT_ENV, "").split(",") if p.strip())


def crash_point(name: str) -> None:
    """SIGKILL this process here if POSTTRAIN_FAULT_CRASH_AT names `name` (once per point
    when POSTTRAIN_FAULT_MARKER_DIR is set)."""
    if name not in _ARMED:
        return
    marker_dir = os.environ.get(MARKER_DIR_ENV)
    if marker_dir:
        marker = Path(marker_dir) / f"{name}.fired"
        try:
            # O_EXCL: of two threads reaching the point, one dies, the other goes on.
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
    # Stderr, unbuffered: the test reads the log to tell this crash from any other.
    os.write(2, f"\nFAULT: crash point {name} reached: SIGKILL pid {os.getpid()}\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)
