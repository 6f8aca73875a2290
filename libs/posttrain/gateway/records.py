"""InferenceLog: inference records written off the request path, in batches.

One commit per request cost ~4 ms on SQLite (an fsync) and ~1 ms on PostgreSQL, more than
the rest of the gateway together. A request hands its record over and returns; a thread
writes what has arrived in one transaction (at most every `interval_s`, or as soon as
`batch_size` wait). `flush()` returns once every record handed over before it is
committed: feedback and reports call it first, so a request is always found by the
process that served it. Another replica sees it within about `interval_s`.

While the database is away records wait (the oldest dropped beyond `capacity`, counted);
a crash loses at most what had not been written yet: inference.logged still carries it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, insert
from sqlalchemy.exc import DataError, IntegrityError

from posttrain.gateway import metrics
from posttrain.gateway.tables import InferenceRow

log = logging.getLogger(__name__)


def wait_until(
    cond: threading.Condition,
    reached: Callable[[], bool],
    timeout_s: float,
    *,
    poll_s: float | None = None,
) -> bool:
    """With `cond` held: wait until reached(), waking the others at each turn (a worker
    asleep on `cond` gets on with it); False once timeout_s passed."""
    deadline = time.monotonic() + timeout_s
    while not reached():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        cond.notify_all()
        cond.wait(left if poll_s is None else min(left, poll_s))
    return True


class InferenceLog:
    def __init__(
        self,
        engine: Engine,
        *,
        interval_s: float = 0.05,
        batch_size: int = 500,
        capacity: int = 100_000,
    ) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.batch_size = batch_size
        self.capacity = capacity
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._added = 0  # records handed over, ever
        self._written = 0  # of those, committed or dropped
        self._stop = False
        self._thread: threading.Thread | None = None

    def add(self, values: dict[str, Any]) -> None:
        """Hand a gateway_inferences row (column -> value) over for writing."""
        with self._cond:
            if len(self._pending) >= self.capacity:
                self._pending.popleft()
                self._written += 1
                metrics.RECORD_FAILURES.inc()
            self._pending.append(values)
            self._added += 1
            if self._thread is None:
                self._start_locked()
            if len(self._pending) >= self.batch_size:
                self._cond.notify_all()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every record added before this call is written; False on timeout."""
        with self._cond:
            target = self._added
            return wait_until(
                self._cond, lambda: self._written >= target, timeout_s, poll_s=self.interval_s
            )

    def start(self) -> InferenceLog:
        with self._cond:
            if self._thread is None:
                self._start_locked()
        return self

    def _start_locked(self) -> None:
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is pending (for up to timeout_s), then end the thread."""
        self.flush(timeout_s)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)

    def _write(self, batch: list[dict[str, Any]]) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(InferenceRow), batch)
        except (IntegrityError, DataError):
            # A row the database refuses would block every later one: write them one by
            # one and drop (log) only the refused.
            for values in batch:
                try:
                    with self.engine.begin() as conn:
                        conn.execute(insert(InferenceRow), [values])
                except (IntegrityError, DataError):
                    metrics.RECORD_FAILURES.inc()
                    log.exception("inference record %s refused; dropped", values.get("request_id"))

    def _run(self) -> None:
        backoff = self.interval_s
        while True:
            with self._cond:
                if not self._pending and not self._stop:
                    self._cond.wait(self.interval_s)
                if self._stop and not self._pending:
                    return
                batch = [
                    self._pending.popleft() for _ in range(min(self.batch_size, len(self._pending)))
                ]
            if not batch:
                continue
            try:
                self._write(batch)
                backoff = self.interval_s
            except Exception:  # noqa: BLE001 - the database is away: keep them, retry
                log.exception("writing %d inference records failed; retrying", len(batch))
                with self._cond:
                    self._pending.extendleft(reversed(batch))
                    while len(self._pending) > self.capacity:
                        self._pending.popleft()
                        self._written += 1
                        metrics.RECORD_FAILURES.inc()
                    if self._stop:  # shutting down with the database away: give up
                        self._written += len(self._pending)
                        self._pending.clear()
                        self._cond.notify_all()
                        return
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            with self._cond:
                self._written += len(batch)
                self._cond.notify_all()
