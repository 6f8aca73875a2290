"""ExperimentGrader without the stack: its bounded queue (never blocks, drops when full),
sampling, a judge that raises or gives no grade, and a grade that is ready before its
inference record is written. A SQLite file per test; judges are stand-ins."""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy.orm import Session

from posttrain.db import apply_migrations, create_db_engine, utcnow
from posttrain.evaluation.judge import Grade, GradeRequest, JudgeConfig, RuleJudge
from posttrain.gateway import GATEWAY_MIGRATIONS
from posttrain.gateway.grading import ExperimentGrader, GradeItem, experiment_judge
from posttrain.gateway.records import InferenceLog
from posttrain.gateway.tables import InferenceRow


@pytest.fixture
def engine(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'gateway.sqlite3'}")
    apply_migrations(engine, "gateway", GATEWAY_MIGRATIONS)
    yield engine
    engine.dispose()


def record(request_id: str) -> dict:
    return dict(
        request_id=request_id,
        tenant="acme",
        use_case="support",
        deployment_id="dep",
        model_version_id="v1",
        experiment_id="exp-1",
        variant="tuned",
        user_key_hash="",
        prompt_tokens=3,
        completion_tokens=2,
        latency_ms=1.0,
        cost=0.0,
        finish_reason="length",
        created_at=utcnow(),
        feedback_by="",
    )


def item(request_id: str, answer: str = "an answer", prompt: str = "a question") -> GradeItem:
    return GradeItem(request_id, prompt, False, answer)


class FixedJudge:
    id = "fixed"
    version = "1"

    def __init__(self, score: int | None = 4) -> None:
        self.score = score
        self.seen: list[GradeRequest] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def grade(self, request: GradeRequest) -> Grade:
        self.seen.append(request)
        self.entered.set()
        self.release.wait(10)
        return Grade(self.score)

    def compare(self, request):  # pragma: no cover - graders only grade
        raise NotImplementedError


class FailingJudge(FixedJudge):
    def grade(self, request: GradeRequest) -> Grade:
        raise ConnectionError("judge endpoint refused the connection")


def scores(engine) -> dict[str, tuple]:
    with Session(engine) as session:
        return {
            r.request_id: (r.judge_score, r.judge_id, r.judge_version)
            for r in session.query(InferenceRow)
        }


def test_a_full_queue_drops_without_blocking_and_counts(engine):
    records = InferenceLog(engine)
    judge = FixedJudge()
    judge.release.clear()  # the worker holds the first item until released
    grader = ExperimentGrader(engine, judge, capacity=2, records=records)
    for n in range(5):
        records.add(record(f"r{n}"))
    assert grader.offer(item("r0"))
    assert judge.entered.wait(10)  # r0 is with the judge, the queue is empty
    accepted = [grader.offer(item(f"r{n}")) for n in range(1, 5)]
    assert accepted == [True, True, False, False]
    assert grader.counts["dropped"] == 2 and grader.queued() == 2
    judge.release.set()
    assert grader.drain(10)
    grader.stop()
    records.stop()
    got = scores(engine)
    assert {k for k, v in got.items() if v[0] is not None} == {"r0", "r1", "r2"}
    assert got["r0"] == (4.0, "fixed", "1") and got["r3"] == (None, None, None)
    assert grader.counts["graded"] == 3


def test_a_grade_ready_before_its_record_is_written_waits_for_it(engine):
    records = InferenceLog(engine, interval_s=30.0)  # writes only when flushed
    grader = ExperimentGrader(engine, FixedJudge(5), records=records)
    records.add(record("late"))
    assert scores(engine) == {}
    grader.offer(item("late"))
    assert grader.drain(10)
    assert scores(engine)["late"] == (5.0, "fixed", "1")
    grader.offer(item("never-served"))  # no record will ever come
    assert grader.drain(20)
    assert grader.counts == {"graded": 1, "lost": 1}
    grader.stop()
    records.stop()


def test_only_the_sampled_share_is_graded(engine):
    draws = iter([0.1, 0.7, 0.29, 0.3, 0.95])
    grader = ExperimentGrader(engine, FixedJudge(), sample_rate=0.3, rng=lambda: next(draws))
    taken = [grader.offer(item(f"s{n}")) for n in range(5)]
    assert taken == [True, False, True, False, False]
    never = ExperimentGrader(engine, FixedJudge(), sample_rate=0.0)
    assert not never.offer(item("x")) and never.queued() == 0
    grader.stop()
    with pytest.raises(ValueError, match="sample_rate"):
        ExperimentGrader(engine, FixedJudge(), sample_rate=1.5)


def test_a_failing_judge_or_no_grade_leaves_the_record_unscored_and_is_counted(engine, caplog):
    records = InferenceLog(engine)
    records.add(record("a"))
    records.add(record("b"))
    records.flush()
    failing = ExperimentGrader(engine, FailingJudge(), records=records)
    failing.offer(item("a"))
    assert failing.drain(10)
    assert failing.counts == {"failed": 1}
    assert "judge endpoint refused the connection" in caplog.text
    silent = ExperimentGrader(engine, FixedJudge(None), records=records)
    silent.offer(item("b"))
    assert silent.drain(10) and silent.counts == {"no_grade": 1}
    assert scores(engine) == {"a": (None, None, None), "b": (None, None, None)}
    # The worker survives both: the next request is graded.
    failing.judge = FixedJudge(3)
    failing.offer(item("b"))
    assert failing.drain(10) and scores(engine)["b"] == (3.0, "fixed", "1")
    for grader in (failing, silent):
        grader.stop()
    records.stop()


def test_the_rule_judge_grades_against_the_last_user_message(engine):
    judge = experiment_judge(JudgeConfig(kind="rule"))
    assert isinstance(judge, RuleJudge)
    records = InferenceLog(engine)
    records.add(record("chat"))
    grader = ExperimentGrader(engine, judge, records=records, prompt_as_reference=True)
    conversation = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "old question"},
            {"role": "assistant", "content": "old answer"},
            {"role": "user", "content": "where is my parcel"},
        ]
    }
    grader.offer(GradeItem("chat", json.dumps(conversation), True, "where is my parcel"))
    assert grader.drain(10)
    assert scores(engine)["chat"] == (5.0, RuleJudge.id, judge.version)
    grader.stop()
    records.stop()
    with pytest.raises(ValueError, match="not available in the gateway"):
        experiment_judge(JudgeConfig(kind="model", model="m:v1"))
