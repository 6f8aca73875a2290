"""Judges: reply parsing, the position swap, the rule judge, and the OpenAI-compatible
backend against a local HTTP server (never the internet)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from posttrain.evaluation import (
    Generation,
    GradeRequest,
    JudgeConfig,
    LLMJudge,
    OpenAIChatBackend,
    RuleJudge,
    build_judge,
    pairwise,
)
from posttrain.evaluation.judge import (
    CompareRequest,
    GeneratorBackend,
    JudgeError,
    parse_preference,
    parse_score,
)

PROMPT = [{"role": "user", "content": "How do I reset?"}]


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("The answer is complete.\nScore: 4", 4),
        ('{"score": 2, "reason": "wrong"}', 2),
        ("Rating: [[5]]", 5),
        ("I'd give it 3/5.", 3),
        ("On a scale of 1 to 5 the score is 1, no wait. Final score: 5", 5),
        ("**4**", 4),
        ("It is fine.", None),
        ("Score: 7", None),
    ],
)
def test_parse_score(reply: str, score: int | None) -> None:
    assert parse_score(reply) == score


@pytest.mark.parametrize(
    ("reply", "preference"),
    [
        ("A is more complete.\nVerdict: B", "B"),
        ("[[A]]", "A"),
        ('{"verdict": "tie"}', "tie"),
        ("Answer B is better because it cites the article.", "B"),
        ("The better answer is A.", "A"),
        ("b", "B"),
        ("Both are fine.", None),
    ],
)
def test_parse_preference(reply: str, preference: str | None) -> None:
    assert parse_preference(reply) == preference


class ScriptedJudge:
    """compare() answers from a script keyed by (answer_a, answer_b)."""

    id, version = "scripted", "1"

    def __init__(self, script: dict[tuple[str, str], str]) -> None:
        self.script = script
        self.seen: list[tuple[str, str]] = []

    def grade(self, request):  # pragma: no cover - not used
        raise NotImplementedError

    def compare(self, request: CompareRequest) -> str:
        self.seen.append((request.answer_a, request.answer_b))
        return self.script[(request.answer_a, request.answer_b)]


@pytest.mark.parametrize(
    ("first", "second", "outcome"),
    [
        ("A", "B", "win"),  # prefers the candidate in both positions
        ("B", "A", "loss"),  # prefers the baseline in both positions
        ("A", "A", "tie"),  # always the first answer: position bias cancels
        ("B", "B", "tie"),  # always the second answer
        ("tie", "B", "tie"),
        ("A", "tie", "tie"),
    ],
)
def test_position_swap(first: str, second: str, outcome: str) -> None:
    judge = ScriptedJudge({("cand", "base"): first, ("base", "cand"): second})
    result = pairwise(judge, prompt=PROMPT, candidate="cand", baseline="base")
    assert result.outcome == outcome
    assert judge.seen == [("cand", "base"), ("base", "cand")]
    assert (result.first, result.second) == (first, second)


def test_rule_judge_grades_and_compares_by_reference_overlap() -> None:
    judge = RuleJudge()
    ref = "hold the reset button for ten seconds"
    assert judge.grade(GradeRequest(PROMPT, ref, ref)).score == 5
    assert judge.grade(GradeRequest(PROMPT, "call us", ref)).score == 1
    assert judge.grade(GradeRequest(PROMPT, "anything")).score is None
    assert judge.grade(GradeRequest(PROMPT, '{"a": 1}', {"a": 1})).score == 5
    better = pairwise(judge, prompt=PROMPT, candidate=ref, baseline="unplug it", reference=ref)
    assert better.outcome == "win"
    same = pairwise(judge, prompt=PROMPT, candidate=ref, baseline=ref, reference=ref)
    assert same.outcome == "tie"


class EchoGenerator:
    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.prompts: list = []

    def generate(self, prompts, max_new_tokens, seed):
        self.prompts.extend(prompts)
        return [Generation(self.reply, 1, 1, 0.0) for _ in prompts]


def test_llm_judge_over_a_registered_model() -> None:
    generator = EchoGenerator("Mostly right.\nScore: 4")
    judge = build_judge(JudgeConfig(kind="model", model="mv-123"), generator=generator)
    grade = judge.grade(
        GradeRequest(PROMPT, "Hold reset.", "Hold reset 10 s.", rubric="RUBRIC-TEXT")
    )
    assert grade.score == 4 and judge.id == "model:mv-123"
    sent = generator.prompts[0]
    assert sent[0]["role"] == "system" and "Score: N" in sent[0]["content"]
    assert "RUBRIC-TEXT" in sent[1]["content"] and "Hold reset 10 s." in sent[1]["content"]
    # the version changes with the model behind the judge
    other = LLMJudge(GeneratorBackend(generator, id="model:mv-124", version="mv-124"))
    assert other.version != judge.version
    unparseable = LLMJudge(GeneratorBackend(EchoGenerator("no idea"), id="m"))
    assert unparseable.compare(CompareRequest(PROMPT, "a", "b")) == "tie"


def test_build_judge_rejects_bad_configs() -> None:
    assert isinstance(build_judge(JudgeConfig()), RuleJudge)
    with pytest.raises(ValueError, match="generator"):
        build_judge(JudgeConfig(kind="model", model="x"))
    with pytest.raises(ValueError, match="base_url"):
        build_judge(JudgeConfig(kind="openai"))
    with pytest.raises(ValueError, match="unknown judge kind"):
        build_judge(JudgeConfig(kind="oracle"))


# ----------------------------------------------------------------------------- OpenAI-compatible


class FakeOpenAI(BaseHTTPRequestHandler):
    requests: list[dict] = []
    failures_left = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.requests.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        if FakeOpenAI.failures_left:
            FakeOpenAI.failures_left -= 1
            self._send(503, {"error": "busy"})
        elif body["model"] == "missing":
            self._send(404, {"error": {"message": "model not found"}})
        elif body["model"] == "broken":
            self._send(200, {"choices": []})
        else:
            system = body["messages"][0]["content"]
            content = "Verdict: A" if "Verdict" in system else "Good answer.\nScore: 5"
            self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def openai_url() -> Iterator[str]:
    FakeOpenAI.requests, FakeOpenAI.failures_left = [], 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_openai_judge_against_a_local_server(
    openai_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", "sk-test")
    judge = build_judge(
        JudgeConfig(
            kind="openai", base_url=openai_url, model="judge-1", api_key_env="JUDGE_KEY_FOR_TEST"
        )
    )
    assert judge.grade(GradeRequest(PROMPT, "Hold reset.", "Hold reset.")).score == 5
    assert judge.compare(CompareRequest(PROMPT, "a", "b")) == "A"
    first = FakeOpenAI.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test"
    assert first["body"]["model"] == "judge-1" and first["body"]["temperature"] == 0
    assert judge.id == f"openai:judge-1@{openai_url}"


def test_openai_backend_retries_then_reports_errors(openai_url: str) -> None:
    FakeOpenAI.failures_left = 1
    backend = OpenAIChatBackend(openai_url, "judge-1", backoff_s=0.01)
    assert "Score: 5" in backend.complete([{"role": "system", "content": "grade"}])
    assert len(FakeOpenAI.requests) == 2 and FakeOpenAI.requests[0]["auth"] is None
    with pytest.raises(JudgeError, match="HTTP 404.*model not found"):
        OpenAIChatBackend(openai_url, "missing", backoff_s=0.01).complete(PROMPT)
    with pytest.raises(JudgeError, match="no choices"):
        OpenAIChatBackend(openai_url, "broken", backoff_s=0.01).complete(PROMPT)
    FakeOpenAI.failures_left = 5
    with pytest.raises(JudgeError, match="HTTP 503"):
        OpenAIChatBackend(openai_url, "judge-1", max_retries=1, backoff_s=0.01).complete(PROMPT)
