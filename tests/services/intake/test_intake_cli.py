"""`posttrain datasets ...` against the in-process intake service."""

from __future__ import annotations

import json
import socket

from click.testing import CliRunner
from conftest import SAMPLE_ROWS, jsonl

from posttrain.cli import cli


def _run(intake, who: str, *args: str):
    return CliRunner().invoke(
        cli, ["datasets", *args, "--target", intake.server.address, "--api-key", intake.keys[who]]
    )


def test_upload_list_show_approve_through_the_cli(intake, tmp_path):
    path = tmp_path / "support.jsonl"
    path.write_bytes(jsonl(SAMPLE_ROWS))
    up = _run(intake, "carol", "upload", str(path), "--name", "claims", "--regulated", "--json")
    assert up.exit_code == 0, up.output
    version = json.loads(up.output)["version"]["version"]
    assert json.loads(up.output)["version"]["state"] == "APPROVAL_STATE_PENDING"

    listed = _run(intake, "eve", "list", "--json")
    assert [d["name"] for d in json.loads(listed.output)] == ["claims"]

    own = _run(intake, "carol", "approve", "claims", version, "--reason", "ok")
    assert own.exit_code == 1
    assert "PERMISSION_DENIED" in own.output and "four-eyes" in own.output

    ok = _run(intake, "bob", "approve", "claims", version, "--reason", "sampled 12 rows")
    assert ok.exit_code == 0 and "APPROVED" in ok.output
    shown = _run(intake, "eve", "show", "claims", "--json")
    assert json.loads(shown.output)[0]["approved_by"] == "bob"


def test_bad_file_lists_rows_and_exits_1(intake, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"messages": [{"role": "user", "content": "q"}]}\n')
    result = _run(intake, "alice", "upload", str(path), "--name", "bad")
    assert result.exit_code == 1
    assert "INVALID_ARGUMENT" in result.output and "row 1" in result.output


def test_unreachable_service_exits_3(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = CliRunner().invoke(
        cli, ["datasets", "list", "--target", f"127.0.0.1:{port}", "--api-key", "pt_x_" + "y" * 20]
    )
    assert result.exit_code == 3
    assert "UNAVAILABLE" in result.output
