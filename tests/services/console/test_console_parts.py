"""The console's pure parts, without a server: session signing and expiry, CSRF tokens,
the four-eyes wording, metric rows, and the SVG charts (escaped, one point per step)."""

from __future__ import annotations

import math

import pytest

from posttrain.console import charts, views
from posttrain.console.sessions import SessionBook
from posttrain.v1 import common_pb2, evaluation_pb2, intake_pb2, registry_pb2

SECRET = b"s" * 32


def principal(name: str = "bob", *roles: str) -> common_pb2.Principal:
    return common_pb2.Principal(name=name, roles=list(roles or ["approver"]), tenant="acme")


def test_a_session_cookie_is_signed_and_holds_no_key():
    book = SessionBook(SECRET)
    signed_in, cookie = book.start("pt_abcd_secretsecretsecret", principal())
    assert "pt_abcd" not in cookie and "secretsecret" not in cookie
    assert book.resolve(cookie) is signed_in and signed_in.may("approver")
    session_id, _, signature = cookie.rpartition(".")
    assert book.resolve(f"{session_id}.{'0' * len(signature)}") is None  # forged
    assert book.resolve(session_id) is None  # unsigned
    assert SessionBook(b"t" * 32).resolve(cookie) is None  # another console's secret
    book.end(session_id)
    assert book.resolve(cookie) is None


def test_a_session_expires_when_idle_and_admin_may_everything():
    now = [0.0]
    book = SessionBook(SECRET, idle_timeout_s=60, clock=lambda: now[0])
    signed_in, cookie = book.start("k", principal("root", "admin"))
    assert signed_in.may("operator") and signed_in.may("rater")
    now[0] = 59
    assert book.resolve(cookie) is signed_in  # and seen again at 59
    now[0] = 59 + 61
    assert book.resolve(cookie) is None


def test_csrf_token_is_per_session():
    book = SessionBook(SECRET)
    first, _ = book.start("k1", principal())
    second, _ = book.start("k2", principal())
    assert book.csrf_ok(first, book.csrf_token(first))
    assert not book.csrf_ok(first, book.csrf_token(second))
    assert not book.csrf_ok(first, None) and not book.csrf_ok(first, "")


def test_a_short_secret_is_refused():
    with pytest.raises(ValueError, match="at least 16 bytes"):
        SessionBook(b"short")


@pytest.mark.parametrize(
    ("state", "me", "may_approve", "may_review", "why"),
    [
        (common_pb2.APPROVAL_STATE_PENDING, "bob", True, True, ""),
        (common_pb2.APPROVAL_STATE_PENDING, "carol", True, False, "you uploaded this version"),
        (common_pb2.APPROVAL_STATE_PENDING, "vera", False, False, "needs the approver role"),
        (common_pb2.APPROVAL_STATE_APPROVED, "bob", True, False, "already approved"),
    ],
)
def test_four_eyes_says_who_may_review(state, me, may_approve, may_review, why):
    version = intake_pb2.DatasetVersion(state=state, uploaded_by="carol")
    eyes = views.four_eyes(version, me, may_approve)
    assert eyes.may_review is may_review and why in eyes.why_not
    assert eyes.uploaded_by == "carol"


def test_metric_rows_split_whole_suite_and_tags_with_deltas():
    report = evaluation_pb2.EvaluationReport(
        metrics=[
            evaluation_pb2.MetricValue(
                name="exact_match", value=0.75, production_value=0.5, has_production_value=True
            ),
            evaluation_pb2.MetricValue(name="exact_match", tag="policy", value=1.0),
        ]
    )
    whole, by_tag = views.metric_rows(report)
    assert [(m.name, m.delta) for m in whole] == [("exact_match", 0.25)]
    assert [(m.tag, m.production, m.delta) for m in by_tag["policy"]] == [("policy", None, None)]


def test_loss_curve_has_one_point_per_step_and_escapes_nothing_unsafe():
    points = [(1, 2.0), (2, 1.5), (3, math.nan), (4, 1.0)]
    svg = charts.loss_curve(points, total_steps=10)
    assert svg.count(" L") == 2 and "step 10" in svg and "loss 1.0000 at step 4" in svg
    assert "no loss reported yet" in charts.loss_curve([], 5)


def test_lineage_graph_escapes_labels_and_draws_edges_between_known_nodes():
    graph = registry_pb2.LineageGraph(
        nodes=[
            registry_pb2.LineageNode(id="dataset_version:x", kind="dataset_version", label="<b>"),
            registry_pb2.LineageNode(id="model_version:m:v1", kind="model_version", label="m:v1"),
        ],
        edges=[
            registry_pb2.LineageEdge(from_id="dataset_version:x", to_id="model_version:m:v1"),
            registry_pb2.LineageEdge(from_id="nowhere", to_id="model_version:m:v1"),
        ],
    )
    svg = charts.lineage_graph(graph, focus="model_version:m:v1")
    assert "<b>" not in svg and "&lt;b&gt;" in svg
    assert svg.count("<line") == 1 and 'stroke-width="2"' in svg


def test_intervals_and_agreement_matrix():
    svg = charts.intervals([("control", 0.5, 0.4, 0.6), ("tuned", 0.7, math.nan, math.nan)])
    assert svg.count('class="ci"') == 1  # the NaN interval is left out
    matrix = charts.agreement_matrix([5, 5, 0, 3], [5, 4, 2, 3])
    assert "judge 5, human 5: 1" in matrix and "judge 3, human 3: 1" in matrix
    assert "human 2: 1" not in matrix  # the judge gave no grade (0)
