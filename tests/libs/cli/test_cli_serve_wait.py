"""`posttrain serve deploy`'s wait: which gateway deployment answers a promotion."""

from google.protobuf.timestamp_pb2 import Timestamp

from posttrain.cli.serve import route_name, wait_for_deployment
from posttrain.v1 import gateway_pb2

LIVE = gateway_pb2.DEPLOYMENT_STATE_LIVE
FAILED = gateway_pb2.DEPLOYMENT_STATE_FAILED
SUPERSEDED = gateway_pb2.DEPLOYMENT_STATE_SUPERSEDED


def _deployment(id_, version, route, state, completed_at):
    return gateway_pb2.Deployment(
        id=id_,
        model_version_id=version,
        use_case=route,
        state=state,
        live=state == LIVE,
        completed_at=Timestamp(seconds=completed_at),
    )


class ListingGateway:
    """Answers ListDeployments from a script: the listing of each successive poll."""

    def __init__(self, polls):
        self.polls = list(polls)
        self.requests = []

    def ListDeployments(self, request, timeout=None):
        self.requests.append(request.use_case)
        listing = self.polls.pop(0) if len(self.polls) > 1 else self.polls[0]
        return gateway_pb2.ListDeploymentsResponse(deployments=listing)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def _wait(gateway, clock, **kw):
    return wait_for_deployment(
        gateway,
        route=kw.get("route", "support/staging"),
        model_version_id=kw.get("version", "bot:v2"),
        since=kw.get("since", 1000.0),
        timeout_s=kw.get("timeout_s", 10.0),
        clock=clock.time,
        sleep=clock.sleep,
    )


def test_waits_through_older_and_foreign_deployments_until_the_new_one_is_live():
    old_same_version = _deployment("d1", "bot:v2", "support/staging", SUPERSEDED, 900)
    other_route = _deployment("d2", "bot:v2", "support", LIVE, 1001)
    other_version = _deployment("d3", "bot:v1", "support/staging", LIVE, 1002)
    new = _deployment("d4", "bot:v2", "support/staging", LIVE, 1003)
    gateway = ListingGateway(
        [[old_same_version, other_route, other_version]] * 3
        + [[old_same_version, other_route, other_version, new]]
    )
    clock = FakeClock()
    found = _wait(gateway, clock)
    assert found.id == "d4"
    assert clock.now == 1003.0  # three polls, one second apart
    assert set(gateway.requests) == {"support/staging"}


def test_a_failed_deployment_is_returned_with_its_error():
    failed = _deployment("d5", "bot:v2", "support/staging", FAILED, 1000)
    failed.error = "artifact s3://posttrain/x is missing"
    found = _wait(ListingGateway([[failed]]), FakeClock())
    assert (found.state, found.error) == (FAILED, "artifact s3://posttrain/x is missing")


def test_none_when_nothing_arrives_in_time():
    clock = FakeClock()
    assert _wait(ListingGateway([[]]), clock, timeout_s=5.0) is None
    assert clock.now == 1005.0


def test_production_is_the_plain_use_case():
    assert route_name("support", "production") == "support"
    assert route_name("support", "staging") == "support/staging"
