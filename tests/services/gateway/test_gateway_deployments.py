"""ListDeployments as a deployment's status: state, error, stage, kind and times of each
deployment, the filters (use case, states) and paging, and `posttrain serve deployments`
/ `deploy-status` showing them. A failed deployment (its artifact does not exist) and a
superseded one (a second deployment took its route) on acme's support/staging."""

from __future__ import annotations

import json

import grpc
import pytest
from click.testing import CliRunner
from conftest import TUNED_V2, deployment_request, rpc_error

from posttrain.cli import cli
from posttrain.v1 import common_pb2, gateway_pb2

LIVE = gateway_pb2.DEPLOYMENT_STATE_LIVE
SUPERSEDED = gateway_pb2.DEPLOYMENT_STATE_SUPERSEDED
FAILED = gateway_pb2.DEPLOYMENT_STATE_FAILED


@pytest.fixture(scope="module")
def deployed(gateway):
    """On support/staging: a deployment of an artifact that does not exist (failed), then
    v2 (live, then superseded), then v1 (live)."""
    missing = deployment_request("dep-missing", gateway.artifacts, stage="staging")
    missing.artifacts[0].uri = missing.artifacts[0].uri.rstrip("/") + "-not-there/"
    rows = [
        gateway.deploy(missing),
        gateway.deploy(
            deployment_request(
                "dep-staging-v2",
                gateway.artifacts,
                version=TUNED_V2,
                artifact="a2",
                stage="staging",
            )
        ),
        gateway.deploy(deployment_request("dep-staging-v1", gateway.artifacts, stage="staging")),
    ]
    assert [r.status for r in rows] == ["failed", "live", "live"], [r.error for r in rows]
    return gateway


def listed(env, who="viewer@acme", **request) -> gateway_pb2.ListDeploymentsResponse:
    return env.stub(who).ListDeployments(gateway_pb2.ListDeploymentsRequest(**request), timeout=10)


def test_a_failed_deployment_is_listed_with_its_state_and_error(deployed):
    by_id = {d.id: d for d in listed(deployed).deployments}
    failed = by_id["dep-missing"]
    assert failed.state == FAILED and not failed.live
    assert "not-there" in failed.error, failed.error
    assert failed.stage == "staging" and failed.use_case == "support/staging"
    assert failed.kind == common_pb2.MODEL_KIND_ADAPTER and failed.triton_model == ""
    assert failed.created_at.ToDatetime() <= failed.completed_at.ToDatetime()
    live = by_id["dep-acme-a1"]
    assert live.state == LIVE and live.live and live.error == "" and live.stage == "production"
    assert live.lora_name and live.triton_model.startswith("llm_")


def test_a_second_deployment_supersedes_the_first(deployed):
    by_id = {d.id: d for d in listed(deployed).deployments}
    assert by_id["dep-staging-v2"].state == SUPERSEDED and not by_id["dep-staging-v2"].live
    assert by_id["dep-staging-v1"].state == LIVE and by_id["dep-staging-v1"].live
    # Newest first, as before the filters existed; no filter lists every state.
    ids = [d.id for d in listed(deployed).deployments if d.tenant == "acme"]
    assert ids == ["dep-staging-v1", "dep-staging-v2", "dep-missing", "dep-acme-a1"]


def test_filters_and_paging(deployed):
    staging = listed(deployed, use_case="support/staging")
    assert [d.id for d in staging.deployments] == [
        "dep-staging-v1",
        "dep-staging-v2",
        "dep-missing",
    ]
    every_stage = listed(deployed, use_case="support")
    assert len(every_stage.deployments) == 4
    production = listed(deployed, use_case="support/production")
    assert [d.id for d in production.deployments] == ["dep-acme-a1"]
    live_ones = listed(deployed, states=[LIVE])
    assert {d.id for d in live_ones.deployments} == {"dep-staging-v1", "dep-acme-a1"}
    inactive = listed(deployed, states=[SUPERSEDED, FAILED])
    assert {d.id for d in inactive.deployments} == {"dep-staging-v2", "dep-missing"}

    first = listed(deployed, use_case="support", page=common_pb2.PageRequest(page_size=3))
    assert len(first.deployments) == 3 and first.page.total == 4
    rest = listed(
        deployed,
        use_case="support",
        page=common_pb2.PageRequest(page_size=3, page_token=first.page.next_page_token),
    )
    assert [d.id for d in rest.deployments] == ["dep-acme-a1"] and rest.page.next_page_token == ""
    assert listed(deployed).page.total == 4  # acme's: globex's billing is not listed

    for bad in (dict(use_case="Not A Use Case"), dict(states=[7])):
        error = rpc_error(lambda bad=bad: listed(deployed, **bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def cli_run(env, *args: str):
    return CliRunner(env={"COLUMNS": "300"}).invoke(  # the table unwrapped
        cli, [*args, "--target", env.server.address, "--api-key", env.key("viewer@acme")]
    )


def test_the_cli_shows_state_and_error(deployed):
    table = cli_run(deployed, "serve", "deployments", "--use-case", "support/staging")
    assert table.exit_code == 0, table.output
    assert "failed" in table.output and "superseded" in table.output
    as_json = cli_run(deployed, "serve", "deployments", "--state", "failed", "--json")
    (failed,) = json.loads(as_json.output)
    assert failed["id"] == "dep-missing" and failed["state"] == "DEPLOYMENT_STATE_FAILED"
    assert "not-there" in failed["error"]
    live = cli_run(deployed, "serve", "deployments", "--live", "--json")
    assert {d["id"] for d in json.loads(live.output)} == {"dep-staging-v1", "dep-acme-a1"}
    status = cli_run(deployed, "serve", "deploy-status", "dep-missing", "--registry-target", "")
    assert status.exit_code == 0, status.output
    assert "dep-missing: failed (" in status.output and "not-there" in status.output
