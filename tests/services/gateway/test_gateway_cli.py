"""`posttrain serve ...` and `posttrain experiments ...` against the in-process gateway."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from posttrain.cli import cli


@pytest.fixture(scope="module")
def module_db_url(tmp_path_factory) -> str:
    """SQLite only: the CLI is a client; the database backends are covered elsewhere."""
    return f"sqlite:///{tmp_path_factory.mktemp('gateway-cli') / 'gateway.sqlite3'}"


def run(gateway, who: str, *args: str):
    group, *rest = args
    return CliRunner().invoke(
        cli,
        [group, *rest, "--target", gateway.server.address, "--api-key", gateway.key(who)],
    )


def test_generate_and_deployments(gateway):
    result = run(gateway, "client@acme", "serve", "generate", "support", "Hello", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["deployment_id"] == "dep-acme-a1" and answer["text"]
    chat = run(
        gateway,
        "client@acme",
        "serve",
        "generate",
        "support",
        "Reverse: red green",
        "--system",
        "Be brief.",
        "--max-tokens",
        "4",
        "--stream",
    )
    assert chat.exit_code == 0, chat.output
    assert "deployment dep-acme-a1" in chat.output
    listed = run(gateway, "viewer@acme", "serve", "deployments", "--json")
    assert listed.exit_code == 0, listed.output
    assert [d["id"] for d in json.loads(listed.output)] == ["dep-acme-a1"]
    status = run(
        gateway, "viewer@acme", "serve", "deploy-status", "dep-acme-a1", "--registry-target", ""
    )
    assert status.exit_code == 0 and "dep-acme-a1: live" in status.output
    missing = run(
        gateway, "viewer@acme", "serve", "deploy-status", "dep-nope", "--registry-target", ""
    )
    assert missing.exit_code == 1 and "not handled" in missing.output
    refused = run(gateway, "client@acme", "serve", "generate", "nothing-here", "Hello")
    assert refused.exit_code == 1 and "NOT_FOUND" in refused.output


def test_experiment_create_report_stop(gateway):
    created = run(
        gateway,
        "operator@acme",
        "experiments",
        "create",
        "support",
        "--variant",
        "control=base:tiny-llama",
        "--variant",
        "tuned=support-bot:v1",
        "--json",
    )
    assert created.exit_code == 0, created.output
    experiment = json.loads(created.output)
    assert [v["share"] for v in experiment["variants"]] == [0.5, 0.5]
    for user in ("ann", "bob", "cyd", "dee"):
        result = run(
            gateway,
            "client@acme",
            "serve",
            "generate",
            "support",
            "Hi",
            "--user-key",
            user,
            "--max-tokens",
            "2",
        )
        assert result.exit_code == 0 and f"experiment {experiment['id']} arm" in result.output
    report = run(gateway, "viewer@acme", "experiments", "report", experiment["id"])
    assert report.exit_code == 0, report.output
    assert "control" in report.output and "tuned" in report.output
    assert "verdict: insufficient data" in report.output and "html: s3://" in report.output
    stopped = run(gateway, "operator@acme", "experiments", "stop", experiment["id"])
    assert stopped.exit_code == 0 and "stopped" in stopped.output
    bad = run(gateway, "operator@acme", "experiments", "create", "support", "--variant", "oops")
    assert bad.exit_code == 2
