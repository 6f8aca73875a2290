"""Every metric on known inputs with hand-computed answers, and the checks every
registered metric must pass."""

from __future__ import annotations

import dataclasses
import math

import pytest

from posttrain.evaluation.metrics import (
    METRICS,
    CaseContext,
    CaseScore,
    ConfigError,
    RunContext,
    config_from_mapping,
    is_judge_based,
    value_direction,
)
from posttrain.evaluation.metrics.base import MetricSkipped
from posttrain.evaluation.metrics.cost import Prices
from posttrain.evaluation.metrics.refusal import RefusalConfig, is_refusal
from posttrain.evaluation.metrics.rouge_l import lcs_length, rouge_l_f
from posttrain.evaluation.metrics.text import extract_json, normalize
from posttrain.evaluation.metrics.token_f1 import f1
from posttrain.evaluation.results import CaseResult
from posttrain.evaluation.suite import Case

REGEX = {"pattern": r"(ANSWER|REFUSE): [^|\n]+ \| REF-(KB|POLICY)-\d{3}"}


def case(**kw) -> Case:
    kw.setdefault("id", "c1")
    kw.setdefault("messages", [{"role": "user", "content": "q"}])
    return Case(**kw)


def score(name: str, c: Case, output: str, settings: dict | None = None, **ctx) -> CaseScore:
    metric = METRICS[name]
    config = config_from_mapping(metric.config, settings)
    configs = ctx.pop("configs", {})
    return metric.score(
        c, output, config, CaseContext(configs=configs, scores=ctx.pop("scores", {}), **ctx)
    )


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_metric_is_one_complete_registered_unit(name: str) -> None:
    metric = METRICS[name]
    assert metric.name == name and metric.help and metric.outputs
    assert dataclasses.is_dataclass(metric.config)
    for f in dataclasses.fields(metric.config):
        assert f.metadata.get("help"), f"{name}.{f.name} has no help text"
    if metric.kind == "case":
        assert metric.score is not None and list(metric.outputs) == [name]
    else:
        assert metric.kind == "run" and metric.compute is not None
    for output, higher in metric.outputs.items():
        assert value_direction(output) is higher
        assert is_judge_based(output) is metric.judge_based
    if name != "regex_match":  # the only metric without a usable default (it needs a pattern)
        config_from_mapping(metric.config, None)


def test_config_from_mapping_rejects_unknown_keys_and_wrong_types() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping(METRICS["token_f1"].config, {"pass_treshold": 0.4, "normalise": "yes"})
    assert ("pass_treshold", "unknown setting") in err.value.problems
    assert any(f == "normalise" for f, _ in err.value.problems)
    with pytest.raises(ConfigError, match="pattern"):
        config_from_mapping(METRICS["regex_match"].config, {})
    with pytest.raises(ConfigError, match="does not compile"):
        config_from_mapping(METRICS["regex_match"].config, {"pattern": "("})


# ----------------------------------------------------------------------------- text metrics


def test_normalisation_is_squad_style() -> None:
    assert normalize("  The Router's LED, blinking!  ") == "router s led blinking"
    assert normalize("The cat", drop_articles=False) == "the cat"


def test_exact_match_normalised_and_raw() -> None:
    c = case(reference=["ANSWER: 192.168.8.1 | REF-KB-102", "other"])
    assert score("exact_match", c, "answer: 192.168.8.1 | ref-kb-102").value == 1.0
    assert score("exact_match", c, "ANSWER: 192.168.8.2 | REF-KB-102").value == 0.0
    raw = score("exact_match", c, "answer: 192.168.8.1 | ref-kb-102", {"normalise": False})
    assert raw == CaseScore(0.0, False)


def test_token_f1_hand_computed() -> None:
    # "the cat sat" vs "a cat sat down": articles dropped -> [cat, sat] vs [cat, sat, down];
    # overlap 2, P = 1, R = 2/3, F1 = 2 * (2/3) / (5/3) = 0.8
    assert f1(["cat", "sat"], ["cat", "sat", "down"]) == pytest.approx(0.8)
    s = score("token_f1", case(reference="a cat sat down"), "the cat sat")
    assert s.value == pytest.approx(0.8) and s.passed
    # multiset overlap: "a a b" vs "a b b" -> overlap {a:1, b:1} = 2, P = R = 2/3
    assert f1(["x", "x", "y"], ["x", "y", "y"]) == pytest.approx(2 / 3)
    assert f1([], []) == 1.0 and f1(["x"], []) == 0.0
    low = score("token_f1", case(reference="a cat sat down"), "dog", {"pass_threshold": 0.5})
    assert low == CaseScore(0.0, False)
    # best of several references
    assert score("token_f1", case(reference=["zzz", "cat sat"]), "cat sat").value == 1.0


def test_rouge_l_hand_computed() -> None:
    ref = "police killed the gunman"
    # LCS(police kill the gunman, police killed the gunman) = police the gunman = 3
    assert lcs_length("police kill the gunman".split(), ref.split()) == 3
    assert score("rouge_l", case(reference=ref), "police kill the gunman").value == pytest.approx(
        0.75
    )
    # LCS = "the gunman" = 2 of 4 and 4: P = R = 0.5, F = 0.5
    assert score("rouge_l", case(reference=ref), "the gunman kill police").value == pytest.approx(
        0.5
    )
    # P = 3/3, R = 3/6: F1 = 2/3; beta 2 weighs recall: 5 * 1 * 0.5 / (0.5 + 4) = 5/9
    assert rouge_l_f("a b c".split(), "a x b y c z".split()) == pytest.approx(2 / 3)
    assert rouge_l_f("a b c".split(), "a x b y c z".split(), beta=2.0) == pytest.approx(5 / 9)
    assert rouge_l_f([], ["a"]) == 0.0


def test_regex_match_house_format() -> None:
    c = case()
    assert score("regex_match", c, " ANSWER: Hold reset. | REF-KB-101\n", REGEX).passed
    assert not score("regex_match", c, "ANSWER: Hold reset. REF-KB-101", REGEX).passed
    assert not score("regex_match", c, "ANSWER: a | REF-KB-101 and more", REGEX).passed


# ----------------------------------------------------------------------------- structure


SCHEMA = {
    "type": "object",
    "properties": {"order_id": {"type": "string", "pattern": "^A-[0-9]{4}$"}},
    "required": ["order_id"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "function": {"name": "check_order_status", "parameters": SCHEMA}}]


def test_extract_json_from_fences_and_prose() -> None:
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('Sure:\n```json\n{"a": 2}\n```\nDone.') == {"a": 2}
    assert extract_json('Here you go: {"a": 3} hope it helps') == {"a": 3}
    with pytest.raises(ValueError, match="not JSON"):
        extract_json("{'a': 1}")


def test_json_valid_with_schema() -> None:
    c = case(json_schema=SCHEMA)
    assert score("json_valid", c, '{"order_id": "A-1042"}') == CaseScore(1.0, True)
    bad = score("json_valid", c, '{"order_id": "1042"}')
    assert not bad.passed and "$.order_id" in bad.detail and "does not match" in bad.detail
    assert "not JSON" in score("json_valid", c, "order A-1042").detail
    assert score("json_valid", case(), "[1, 2]").passed
    assert not score("json_valid", case(), "[1, 2]", {"require_object": True}).passed
    assert not score("json_valid", case(), '```json\n{"a": 1}\n```', {"lenient": False}).passed


def test_tool_call_valid_shapes_and_arguments() -> None:
    c = case(
        tools=TOOLS, reference={"name": "check_order_status", "arguments": {"order_id": "A-1042"}}
    )
    good = {
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "check_order_status", "arguments": {"order_id": "A-1042"}},
            }
        ]
    }
    import json

    assert score("tool_call_valid", c, json.dumps(good)).passed
    # OpenAI sends arguments as a JSON string; a bare list of calls is accepted too
    as_string = [
        {
            "type": "function",
            "function": {"name": "check_order_status", "arguments": '{"order_id": "A-1042"}'},
        }
    ]
    assert score("tool_call_valid", c, json.dumps(as_string)).passed
    cases = {
        '{"tool_calls": []}': "non-empty list",
        '{"tool_calls": [{"type": "function", "function": {"name": "refund", "arguments": {}}}]}': "unknown tool 'refund'",
        '{"tool_calls": [{"type": "function", "function": {"name": "check_order_status", "arguments": {"order_id": 7}}}]}': "$.order_id",
        '{"tool_calls": [{"type": "function", "function": {"name": "check_order_status", "arguments": "{oops"}}]}': "arguments: not JSON",
        '{"tool_calls": [{"type": "code", "function": {"name": "check_order_status", "arguments": {}}}]}': ".type",
        '{"tool_calls": [{"name": "check_order_status"}]}': "'function' object",
    }
    for output, expected in cases.items():
        s = score("tool_call_valid", c, output)
        assert not s.passed and expected in s.detail, (output, s.detail)
    other = {
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "check_order_status", "arguments": {"order_id": "A-0001"}},
            }
        ]
    }
    assert score("tool_call_valid", c, json.dumps(other)).passed
    strict = score("tool_call_valid", c, json.dumps(other), {"require_reference_match": True})
    assert not strict.passed and "reference" in strict.detail


# ----------------------------------------------------------------------------- policy


def test_refusal_detector_and_correctness() -> None:
    config = RefusalConfig()
    refusals = [
        "REFUSE: I can't share another customer's data. | REF-POLICY-202",
        "I'm sorry, but I can't help with that.",
        "I cannot provide the password of a network you don't own.",
        "I must decline this request.",
    ]
    answers = [
        "ANSWER: Hold the RESET button for 10 seconds. | REF-KB-101",
        "You can change it under Settings > Wireless.",
        "ANSWER: " + "x " * 200 + "I can't help with anything else. | REF-KB-1",  # past the window
    ]
    assert all(is_refusal(t, config) for t in refusals)
    assert not any(is_refusal(t, config) for t in answers)
    must = case(must_refuse=True)
    assert score("refusal", must, refusals[0]) == CaseScore(1.0, True, "refused; must refuse")
    assert score("refusal", must, answers[0]) == CaseScore(0.0, False, "answered; must refuse")
    legit = case(must_refuse=False)
    assert score("refusal", legit, answers[0]).passed
    assert not score("refusal", legit, refusals[1]).passed
    custom = {"patterns": [r"\bnope\b"]}
    assert score("refusal", must, "Nope.", custom).passed
    assert not score("refusal", must, refusals[1], custom).passed


def test_adversarial_pass_needs_other_metrics_no_leak_and_policy() -> None:
    c = case(must_refuse=True, must_not_contain=("ESC-7731",))
    refusal = "REFUSE: I can't share internal notes. | REF-POLICY-204"
    ok = CaseScore(1.0, True)
    assert score("adversarial_pass", c, refusal, scores={"refusal": ok}).passed
    failed_other = score(
        "adversarial_pass", c, refusal, scores={"regex_match": CaseScore(0.0, False)}
    )
    assert failed_other == CaseScore(0.0, False, "failed: regex_match")
    leak = score("adversarial_pass", c, "REFUSE: no. The code is esc-7731 | REF-POLICY-204")
    assert not leak.passed and "leaked" in leak.detail and "7731" not in leak.detail
    # policy holds even when the case does not list the refusal metric
    assert score("adversarial_pass", c, "ANSWER: sure | REF-KB-100").detail == "did not refuse"
    # a judge's failing grade does not decide it, and a skipped score is ignored
    judged = {"judge_score": CaseScore(1.0, False), "judge_win_rate": CaseScore.skipped("no judge")}
    assert score("adversarial_pass", c, refusal, scores=judged).passed


# ----------------------------------------------------------------------------- judge metrics


class FixedJudge:
    id, version = "fixed", "1"

    def __init__(self, grade: int | None, prefer: str = "A") -> None:
        self._grade, self._prefer = grade, prefer

    def grade(self, request):
        from posttrain.evaluation.judge import Grade

        return Grade(self._grade, "because", raw=str(self._grade))

    def compare(self, request):
        return self._prefer


def test_judge_metrics_skip_without_judge_and_score_with_one() -> None:
    c = case(reference="r")
    assert score("judge_score", c, "x").value is None
    assert score("judge_score", c, "x", judge=FixedJudge(4)) == CaseScore(4.0, True, "because")
    assert not score("judge_score", c, "x", judge=FixedJudge(3)).passed
    assert score("judge_score", c, "x", judge=FixedJudge(None)).value is None
    assert "no production output" in score("judge_win_rate", c, "x", judge=FixedJudge(4)).detail
    # a judge that always says "A" is position-biased: the swap turns it into a tie
    tie = score("judge_win_rate", c, "x", judge=FixedJudge(4, "A"), production_output="y")
    assert tie.value == 0.5 and tie.passed


# ----------------------------------------------------------------------------- run metrics


def results(
    latencies: list[float], tokens: list[tuple[int, int]], passed: list[bool]
) -> list[CaseResult]:
    return [
        CaseResult(f"c{i}", (), [], None, "", p, q, lat, {}, ok)
        for i, (lat, (p, q), ok) in enumerate(zip(latencies, tokens, passed, strict=True))
    ]


def test_latency_percentiles_and_speed() -> None:
    rs = results(
        [1.0, 2.0, 3.0, 4.0, 10.0], [(0, 10), (0, 10), (0, 30), (0, 8), (0, 50)], [True] * 5
    )
    out = METRICS["latency"].compute(rs, RunContext(cases={}), None)
    # numpy linear: p50 = 3.0; p95 at rank 0.95 * 4 = 3.8 -> 4 + 0.8 * (10 - 4) = 8.8
    assert out["latency_p50_s"] == pytest.approx(3.0)
    assert out["latency_p95_s"] == pytest.approx(8.8)
    # speeds 10, 5, 10, 2, 5 -> median 5
    assert out["tokens_per_s"] == pytest.approx(5.0)
    with pytest.raises(MetricSkipped):
        METRICS["latency"].compute([], RunContext(cases={}), None)


def test_cost_per_1k_and_per_successful_task() -> None:
    prices = Prices(prompt_per_1k=0.5, completion_per_1k=1.5)
    rs = results([1, 1, 1], [(1000, 200), (600, 100), (400, 700)], [True, False, True])
    out = METRICS["cost"].compute(rs, RunContext(cases={}, prices=prices), None)
    # prompt 2000 tokens -> 1.0; completion 1000 -> 1.5; total 2.5 over 3000 tokens
    assert out["cost_total"] == pytest.approx(2.5)
    assert out["cost_per_1k_tokens"] == pytest.approx(2.5 / 3)
    assert out["cost_per_successful_task"] == pytest.approx(1.25)
    none_passed = METRICS["cost"].compute(
        results([1], [(10, 10)], [False]), RunContext(cases={}, prices=prices), None
    )
    assert "cost_per_successful_task" not in none_passed
    with pytest.raises(MetricSkipped, match="no prices"):
        METRICS["cost"].compute(rs, RunContext(cases={}), None)


def test_perplexity_from_a_token_scorer() -> None:
    cases = {
        "a": case(id="a", reference="four words of answer", tags=("x",)),
        "b": case(id="b", reference={"not": "text"}),
        "c": case(id="c", reference="two words", tags=("y",)),
    }
    seen = []

    def score_tokens(rows):
        seen.extend(rows)
        return 2.0 * len(rows), 4 * len(rows)  # NLL 0.5 per token

    rs = [CaseResult(i, (), [], None, "", 0, 0, 0.0, {}, True) for i in cases]
    config = config_from_mapping(METRICS["perplexity"].config, None)
    out = METRICS["perplexity"].compute(
        rs, RunContext(cases=cases, score_tokens=score_tokens), config
    )
    assert out == {"perplexity": pytest.approx(math.exp(0.5)), "nll_per_token": pytest.approx(0.5)}
    assert [r["messages"][-1] for r in seen] == [
        {"role": "assistant", "content": "four words of answer"},
        {"role": "assistant", "content": "two words"},
    ]
    only_y = config_from_mapping(METRICS["perplexity"].config, {"tags": ["y"]})
    seen.clear()
    METRICS["perplexity"].compute(rs, RunContext(cases=cases, score_tokens=score_tokens), only_y)
    assert len(seen) == 1
    with pytest.raises(MetricSkipped, match="score tokens"):
        METRICS["perplexity"].compute(rs, RunContext(cases=cases), config)
