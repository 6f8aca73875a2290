"""ExperimentGrader: the experiment judge, off the request path.

A request served as part of a running experiment is sampled (`sample_rate`); if it is,
its prompt or conversation and its answer go to a bounded queue in memory and a worker
thread grades them with a posttrain.evaluation Judge (`Judge.grade`: 1..5 against the
rubric) and writes the score, with the judge's id and version, onto the request's
inference record, where the experiment report finds it.

- The request never waits and never fails for this: `offer` only appends to the queue;
  a full queue drops the request's grading (counted as "dropped").
- The texts live in that queue only and are gone once graded: nothing here stores or
  logs them. A shutdown forgets what was still waiting.
- A grade can be ready before its record is written (records are batched: InferenceLog):
  a miss flushes the log and tries again; a record that never came is counted as "lost".
- A judge that raises or replies without a grade is logged and counted ("failed",
  "no_grade"); the record keeps judge_score NULL.

The rule judge (token F1 against a reference) has no reference in live traffic: it
grades against the conversation's last user message instead, i.e. how much of what was
asked the answer takes up. A model-free stand-in for tests and demos, not a measure of
quality; use an LLM judge (openai, triton) for that.
"""

from __future__ import annotations

import collections
import json
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Engine

from posttrain.evaluation.generation import Messages
from posttrain.evaluation.judge import GradeRequest, Judge, JudgeConfig, build_judge
from posttrain.gateway import metrics
from posttrain.gateway.records import InferenceLog, wait_until
from posttrain.gateway.tables import InferenceRow

log = logging.getLogger(__name__)

OUTCOMES = ("graded", "no_grade", "failed", "dropped", "lost")


@dataclass(frozen=True)
class GradeItem:
    """One served experiment request waiting for the judge (in memory only)."""

    request_id: str
    text_input: str  # as Triton got it: the prompt, or {"messages": [...]} for a chat
    chat: bool
    answer: str

    def messages(self) -> Messages:
        if self.chat:
            return json.loads(self.text_input)["messages"]
        return [{"role": "user", "content": self.text_input}]


def experiment_judge(config: JudgeConfig) -> Judge:
    """The judge a gateway config names: rule, openai or triton (kind "model" loads a model
    into the process, which the gateway does not do: serve it in Triton instead)."""
    if config.kind == "model":
        raise ValueError(
            "judge kind 'model' is not available in the gateway: serve the judge model in "
            "Triton (kind 'triton') or behind an OpenAI-compatible endpoint (kind 'openai')"
        )
    return build_judge(config)


class ExperimentGrader:
    def __init__(
        self,
        engine: Engine,
        judge: Judge,
        *,
        rubric: str = "",
        sample_rate: float = 1.0,
        capacity: int = 1000,
        records: InferenceLog | None = None,
        prompt_as_reference: bool = False,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must lie in [0, 1], got {sample_rate}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.engine = engine
        self.judge = judge
        self.rubric = rubric
        self.sample_rate = sample_rate
        self.capacity = capacity
        self.records = records
        self.prompt_as_reference = prompt_as_reference
        self.counts: collections.Counter[str] = collections.Counter()
        self._rng = rng
        self._pending: collections.deque[GradeItem] = collections.deque()
        self._cond = threading.Condition()
        self._offered = 0  # items queued, ever
        self._done = 0  # of those, graded or given up
        self._stop = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ request path

    def offer(self, item: GradeItem) -> bool:
        """Queue a served experiment request for grading when it is sampled. Never blocks;
        False when it was not sampled or the queue was full (dropped, counted)."""
        if self.sample_rate <= 0.0 or (self.sample_rate < 1.0 and self._rng() >= self.sample_rate):
            return False
        with self._cond:
            if len(self._pending) >= self.capacity:
                self._count("dropped")
                return False
            self._pending.append(item)
            self._offered += 1
            metrics.JUDGE_QUEUED.set(len(self._pending))
            if self._thread is None:
                self._start_locked()
            self._cond.notify_all()
        return True

    # ------------------------------------------------------------------ lifecycle

    def queued(self) -> int:
        with self._cond:
            return len(self._pending)

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until every item queued before this call is graded (or given up); False on
        timeout. Tests and tools: a report does not wait for the judge."""
        with self._cond:
            target = self._offered
            return wait_until(self._cond, lambda: self._done >= target, timeout_s)

    def start(self) -> ExperimentGrader:
        with self._cond:
            if self._thread is None:
                self._start_locked()
        return self

    def _start_locked(self) -> None:
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="experiment-judge", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Grade what is queued for up to timeout_s, then forget the rest and end."""
        self.drain(timeout_s)
        with self._cond:
            self._stop = True
            forgotten = len(self._pending)
            self._pending.clear()
            self._done += forgotten
            metrics.JUDGE_QUEUED.set(0)
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if forgotten:
            log.warning("stopping: %d experiment requests were not graded", forgotten)
        if thread is not None:
            thread.join(timeout_s)

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                item = self._pending.popleft()
                metrics.JUDGE_QUEUED.set(len(self._pending))
            try:
                self._grade(item)
            except Exception:  # noqa: BLE001 - the worker must outlive any one request
                self._count("lost")
                log.exception("storing the grade of request %s failed", item.request_id)
            with self._cond:
                self._done += 1
                self._cond.notify_all()

    def _grade(self, item: GradeItem) -> None:
        messages = item.messages()
        reference = None
        if self.prompt_as_reference:
            asked = [m["content"] for m in messages if m["role"] == "user"]
            reference = asked[-1] if asked else None
        try:
            grade = self.judge.grade(GradeRequest(messages, item.answer, reference, self.rubric))
        except Exception as exc:  # noqa: BLE001 - a judge failure never reaches the request
            self._count("failed")
            log.warning("judge %s failed on request %s: %s", self.judge.id, item.request_id, exc)
            return
        if grade.score is None:
            self._count("no_grade")
            log.info("judge %s gave request %s no grade", self.judge.id, item.request_id)
            return
        self._write(item.request_id, grade.score)

    def _write(self, request_id: str, score: int) -> None:
        update = (
            sa.update(InferenceRow)
            .where(InferenceRow.request_id == request_id)
            .values(
                judge_score=float(score),
                judge_id=self.judge.id[:200],
                judge_version=self.judge.version[:100],
            )
        )
        for attempt in range(2):
            with self.engine.begin() as conn:
                if conn.execute(update).rowcount:
                    self._count("graded")
                    return
            if attempt == 0 and self.records is not None:
                self.records.flush()  # graded before its record was written
        self._count("lost")
        log.warning("no inference record %s to store its judge score on", request_id)

    def _count(self, outcome: str) -> None:
        with self._cond:  # an RLock: offer counts while holding it
            self.counts[outcome] += 1
        metrics.JUDGE_GRADES.labels(outcome).inc()
