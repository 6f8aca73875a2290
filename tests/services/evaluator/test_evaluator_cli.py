"""`posttrain eval ...` against the in-process evaluator service (SQLite: the CLI only
talks gRPC, the database behind it is covered by the other modules)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from evaluator_helpers import suite_files

from posttrain.cli import cli

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _run(env, who: str, *args: str):
    return CliRunner().invoke(
        cli, ["eval", *args, "--target", env.server.address, "--api-key", env.keys[who]]
    )


def test_run_list_report_review_label_through_the_cli(evaluator):
    ran = _run(evaluator, "olivia", "run", "bot:v1", "--suite", "smoke-fail", "--seed", "3")
    assert ran.exit_code == 0
    assert "verdict FAIL" in ran.output and "min_metric token_f1@overall" in ran.output
    report_id = ran.stdout.split(":", 1)[0]

    listed = _run(evaluator, "vic", "list", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)] == [report_id]
    shown = _run(evaluator, "vic", "report", report_id)
    assert shown.exit_code == 0 and "policy" in shown.output  # per-tag rows too

    queue = json.loads(_run(evaluator, "rita", "review", "--json").stdout)
    assert len(queue) == 2
    text = _run(evaluator, "rita", "review")
    assert queue[0]["id"] in text.output and "output" in text.output
    labelled = _run(evaluator, "rita", "label", queue[0]["id"], "--score", "2", "--label", "meh")
    assert labelled.exit_code == 0 and "added to the anchor set" in labelled.output
    assert len(json.loads(_run(evaluator, "rita", "review", "--json").stdout)) == 1
    denied = _run(evaluator, "vic", "label", queue[1]["id"], "--score", "3")
    assert denied.exit_code == 1 and "PERMISSION_DENIED" in denied.output
    assert _run(evaluator, "rita", "label", queue[1]["id"]).exit_code == 2  # nothing given

    anchors = _run(evaluator, "vic", "anchors", "--suite", "smoke-fail")
    assert "4 anchor items (1 from review)" in anchors.output
    calibration = _run(evaluator, "vic", "calibration", "--suite", "smoke-fail")
    assert "NOT trusted, 4 anchors" in calibration.output


def test_upload_suite_from_a_folder_and_its_row_errors(evaluator, tmp_path):
    folder = tmp_path / "suite"
    folder.mkdir()
    for name, content in suite_files("cli-suite").items():
        (folder / name).write_bytes(content)
    (folder / "README.md").write_text("not part of the suite")  # left out: not named
    up = _run(evaluator, "olivia", "upload-suite", str(folder))
    assert up.exit_code == 0, up.output
    assert "cli-suite: stored as version" in up.output and "4 cases" in up.output
    assert "cli-suite" in _run(evaluator, "vic", "suites").output

    (folder / "cases.jsonl").write_text('{"id": "x"}\n{"id": "y", "prompt": 3}\n')
    bad = _run(evaluator, "olivia", "upload-suite", str(folder))
    assert bad.exit_code == 1 and "INVALID_ARGUMENT" in bad.output
    assert "row 1 cases.jsonl:prompt" in bad.output and "row 2 cases.jsonl:prompt" in bad.output
