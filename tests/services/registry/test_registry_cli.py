"""`posttrain models ...` against the real registry service over gRPC (and real S3 for
import-base), human and --json output."""

from __future__ import annotations

import json

from click.testing import CliRunner
from registry_factories import seed_version, sha, uid, write_hf_folder

from posttrain.cli import cli


def run(registry, *args: str, roles=("operator",), env=None, ok: bool = True):
    key = registry.key(*roles, name="cli-user")
    result = CliRunner().invoke(
        cli,
        ["models", *args, "--target", registry.server.address],
        env={"POSTTRAIN_API_KEY": key, "COLUMNS": "200", **(env or {})},
        catch_exceptions=False,
    )
    assert (result.exit_code == 0) == ok, result.output
    return result


def test_promote_show_list_lineage_rollback_and_audit_from_the_command_line(registry):
    data = sha(f"data-{uid()}")
    old = seed_version(registry.engine, passed=True, dataset_version=data)
    new = seed_version(registry.engine, passed=True, dataset_version=data)
    assert "support/production -> " + old in run(registry, "promote", old, "support").output
    promoted = json.loads(
        run(registry, "promote", new, "support", "--json", "--reason", "r2").output
    )
    assert promoted["model_version_id"] == new and promoted["rollback_to"] == [old]

    shown = json.loads(run(registry, "show", new, "--json", roles=("viewer",)).output)
    assert shown["version"]["gate_verdict"] == "GATE_VERDICT_PASS"
    assert [a["use_case"] for a in shown["aliases"]] == ["support"]
    assert new in run(registry, "show", new, roles=("viewer",)).output

    listed = json.loads(run(registry, "list", "--json", roles=("viewer",)).output)
    assert {v["id"] for v in listed["versions"]} == {old, new}
    assert old in run(registry, "list", roles=("viewer",)).output

    graph = json.loads(
        run(registry, "lineage", f"dataset_version:{data}", "--direction", "down", "--json").output
    )
    kinds = {n["id"]: n["kind"] for n in graph["nodes"]}
    assert kinds[f"model_version:{old}"] == "model_version" and kinds[f"model_version:{new}"]
    up = json.loads(
        run(
            registry, "lineage", "alias:acme/support/production", "--direction", "up", "--json"
        ).output
    )
    assert f"dataset_version:{data}" in {n["id"] for n in up["nodes"]}
    assert "training_job:" in run(registry, "lineage", new).output  # a bare version id

    rolled = run(registry, "rollback", "support", "--reason", "bad answers").output
    assert f"rolled back to {old}" in rolled
    assert old in run(registry, "aliases", roles=("viewer",)).output
    entries = json.loads(run(registry, "audit", "--action", "alias.rolled_back", "--json").output)
    [entry] = entries["entries"]
    assert (entry["actor"], entry["reason"]) == ("cli-user", "bad answers")
    assert "alias.promoted" in run(registry, "audit").output


def test_errors_are_reported_with_their_status_and_a_non_zero_exit(registry):
    vid = seed_version(registry.engine)
    refused = run(registry, "promote", vid, "support", ok=False)
    assert "error: FAILED_PRECONDITION" in refused.output
    assert "no release-gate verdict" in refused.output
    denied = run(registry, "archive", vid, roles=("viewer",), ok=False)
    assert "error: PERMISSION_DENIED" in denied.output
    assert "error: NOT_FOUND" in run(registry, "show", "ghost:v1", ok=False).output


def test_import_base_uploads_the_folder_and_registers_it(registry, stack, tmp_path):
    s3 = stack.s3_settings(bucket=registry.store.bucket)
    env = {
        "POSTTRAIN_S3_ENDPOINT": s3.endpoint,
        "POSTTRAIN_S3_ACCESS_KEY": s3.access_key,
        "POSTTRAIN_S3_SECRET_KEY": s3.secret_key,
        "POSTTRAIN_S3_BUCKET": s3.bucket,
    }
    folder = write_hf_folder(tmp_path / "tiny")
    name = f"tiny-{uid()}"
    result = run(registry, "import-base", name, str(folder), "--json", roles=("trainer",), env=env)
    model = json.loads(result.output)
    assert (model["name"], model["architecture"], model["parameters"]) == (
        name,
        "LlamaForCausalLM",
        "64",
    )
    assert model["weights"]["uri"].endswith(f"base-models/{name}/manifest.json")
    assert name in run(registry, "bases", roles=("viewer",)).output
