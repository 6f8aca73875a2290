"""Suite files: the shipped suites load, bad files are rejected with every problem's row,
field and reason, and the version is a content hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from posttrain.evaluation import DEFAULT_SUITE_DIR, SuiteError, load_suite, parse_suite
from posttrain.evaluation.metrics.refusal import RefusalConfig
from posttrain.evaluation.suite import OVERALL

SUITES_ROOT = DEFAULT_SUITE_DIR.parent
HEADER = {"name": "t", "metrics": ["token_f1"]}
GOOD = {"id": "ok", "prompt": "hi", "reference": "hello"}


def lines(*rows: object) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows)


def problems(header: dict | str, *rows: object) -> list[tuple[int, str, str]]:
    with pytest.raises(SuiteError) as err:
        parse_suite(header, lines(*rows))
    return [(v.row, v.field, v.code) for v in err.value.violations]


@pytest.mark.parametrize(
    "folder", sorted(p.parent for p in SUITES_ROOT.glob("*/suite.yaml")), ids=lambda p: p.name
)
def test_every_shipped_suite_loads_with_its_gate_policy_and_anchors(folder: Path) -> None:
    suite = load_suite(folder)
    assert suite.cases and len(suite.version) == 64
    assert suite.gate_policy is not None and suite.anchors


def test_default_suite_covers_the_demo_domain() -> None:
    suite = load_suite(DEFAULT_SUITE_DIR)
    assert suite.name == "support" and 30 <= len(suite.cases) <= 45
    assert {"domain", "policy", "adversarial", "tool-call", "long-context"} <= set(suite.tags)
    policy = [c for c in suite.cases if c.must_refuse is not None and "adversarial" not in c.tags]
    assert {c.must_refuse for c in policy} == {True, False}  # refuse some, answer others
    assert all(c.messages[0]["role"] == "system" for c in suite.cases)
    assert isinstance(suite.config("refusal"), RefusalConfig)
    # every reference in the house format passes the suite's own format check
    import re

    pattern = suite.config("regex_match").pattern
    for c in suite.cases:
        if isinstance(c.reference, str):
            assert re.fullmatch(pattern, c.reference), c.id
    long = [c for c in suite.cases if "long-context" in c.tags]
    assert all(sum(len(m["content"]) for m in c.messages) > 2000 for c in long)


def test_version_is_content_not_formatting() -> None:
    rows = lines(GOOD, {"id": "b", "prompt": "x", "reference": "y"})
    base = parse_suite(HEADER, rows)
    reformatted = parse_suite(
        yaml.safe_dump(HEADER, default_flow_style=False), rows.replace('": ', '":  ') + "\n\n"
    )
    assert reformatted.version == base.version
    assert parse_suite({**HEADER, "gate_policy": "other.yaml"}, rows).version == base.version
    changed = parse_suite(HEADER, rows.replace('"hello"', '"hello!"'))
    assert changed.version != base.version
    assert parse_suite({**HEADER, "rubric": "be kind"}, rows).version != base.version


def test_system_prompt_goes_first_unless_the_case_has_one() -> None:
    suite = parse_suite(
        {**HEADER, "system_prompt": "SYS"},
        lines(
            GOOD,
            {
                "id": "own",
                "prompt": [{"role": "system", "content": "MINE"}, {"role": "user", "content": "q"}],
                "reference": "r",
            },
        ),
    )
    assert suite.cases[0].messages == [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "hi"},
    ]
    assert suite.cases[1].messages[0]["content"] == "MINE"


def test_bad_cases_are_rejected_with_row_field_and_reason() -> None:
    found = problems(
        HEADER,
        "// a comment line keeps its line number",
        GOOD,
        "{not json",
        '["a list"]',
        {"prompt": "no id", "reference": "r"},
        {"id": "ok", "prompt": "duplicate id", "reference": "r"},
        {"id": "p", "prompt": "", "reference": "r"},
        {"id": "q", "prompt": [{"role": "robot", "content": "x"}], "reference": "r"},
        {
            "id": "r",
            "prompt": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
            "reference": "r",
        },
        {"id": "s", "prompt": "x", "reference": "r", "tags": ["Policy", OVERALL]},
        {"id": "t", "prompt": "x", "reference": "r", "metrics": ["bleu"]},
        {"id": "u", "prompt": "x", "metrics": "exact_match"},
        {"id": "v", "prompt": "x", "metrics": ["refusal"], "must_refuse": "yes"},
        {"id": "w", "prompt": "x", "metrics": ["json_valid"], "json_schema": {"type": "banana"}},
        {"id": "x", "prompt": "x", "metrics": ["tool_call_valid"]},
        {"id": "y", "prompt": "x", "reference": "r", "max_new_tokens": 0, "colour": "red"},
        {"id": "z", "prompt": "x", "reference": "r", "metrics": ["latency"]},
        '{"id": "nan", "prompt": "x", "reference": NaN}',
    )
    expected = [
        (3, "", "bad_json"),
        (4, "", "wrong_type"),
        (5, "id", "missing_field"),
        (6, "id", "duplicate_id"),
        (7, "prompt", "bad_value"),
        (8, "prompt[0].role", "bad_value"),
        (9, "prompt[1].role", "bad_value"),
        (10, "tags[0]", "bad_value"),
        (10, "tags[1]", "bad_value"),
        (11, "metrics[0]", "unknown_metric"),
        (12, "reference", "metric_requirement"),
        (13, "must_refuse", "wrong_type"),
        (13, "must_refuse", "metric_requirement"),
        (14, "json_schema.type", "bad_schema"),
        (15, "tools", "metric_requirement"),
        (16, "colour", "unknown_field"),
        (16, "max_new_tokens", "bad_value"),
        (17, "metrics[0]", "unknown_metric"),
        (18, "", "bad_json"),
    ]
    assert sorted(found) == sorted(expected)


def test_error_message_lists_rows() -> None:
    with pytest.raises(SuiteError) as err:
        parse_suite(
            HEADER, lines(GOOD, {"id": "b", "prompt": 3, "reference": "r"}), source="cases.jsonl"
        )
    text = str(err.value)
    assert "cases.jsonl: 1 problem(s)" in text and "row 2: prompt:" in text


def test_bad_headers_are_rejected_row_zero() -> None:
    found = problems(
        {
            "name": "Bad Name",
            "metrics": ["token_f1", "nope"],
            "run_metrics": ["token_f1"],
            "metric_config": {"token_f1": {"pass_treshold": 1}, "ghost": {}},
            "max_new_tokens": -1,
            "colour": "red",
        },
        GOOD,
    )
    assert set(found) >= {
        (0, "name", "bad_value"),
        (0, "metrics[1]", "unknown_metric"),
        (0, "run_metrics[0]", "unknown_metric"),
        (0, "metric_config.ghost", "unknown_metric"),
        (0, "max_new_tokens", "bad_value"),
        (0, "colour", "unknown_field"),
    }
    # a config that does not fit its metric is reported once the header parses
    assert problems({**HEADER, "metric_config": {"token_f1": {"pass_treshold": 1}}}, GOOD) == [
        (0, "metric_config.token_f1.pass_treshold", "bad_config")
    ]
    assert problems({**HEADER, "metrics": ["regex_match"]}, GOOD) == [
        (0, "metric_config.regex_match", "bad_config")
    ]
    assert problems("name: [unclosed", GOOD) == [(0, "", "bad_yaml")]
    assert problems(HEADER) == [(0, "cases", "no_cases")]
    assert problems({"metrics": ["token_f1"]}, GOOD) == [(0, "name", "missing_field")]


def test_not_utf8_is_reported_with_its_row() -> None:
    with pytest.raises(SuiteError) as err:
        parse_suite(HEADER, json.dumps(GOOD).encode() + b'\n{"id": "\xff"}')
    assert [(v.row, v.code) for v in err.value.violations] == [(2, "bad_encoding")]


def test_load_suite_reports_missing_files(tmp_path: Path) -> None:
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({**HEADER, "gate_policy": "gate.yaml"}))
    with pytest.raises(SuiteError) as err:
        load_suite(tmp_path)
    assert {v.field for v in err.value.violations} == {"cases", "gate_policy"}
