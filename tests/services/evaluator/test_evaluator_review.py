"""The review queue, anchor sets grown from labels, judge calibration figures, and who may
do what (roles and tenants), over gRPC on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import grpc
from evaluator_helpers import ANCHORS, rpc_error

from posttrain.v1 import evaluation_pb2


def run(env, who: str, model_version_id: str, **fields) -> evaluation_pb2.EvaluationReport:
    return env.stub(who).RunEvaluation(
        evaluation_pb2.RunEvaluationRequest(model_version_id=model_version_id, **fields)
    )


def items(env, who: str, **fields) -> list[evaluation_pb2.ReviewItem]:
    return list(
        env.stub(who).ListReviewItems(evaluation_pb2.ListReviewItemsRequest(**fields)).items
    )


def label(env, who: str, item_id: str, score: float = 0, text: str = "", comment: str = ""):
    return env.stub(who).SubmitReviewLabel(
        evaluation_pb2.SubmitReviewLabelRequest(
            item_id=item_id, score=score, label=text, comment=comment
        )
    )


def anchors(env, who: str = "rita") -> evaluation_pb2.AnchorSet:
    return env.stub(who).ExportAnchors(evaluation_pb2.ExportAnchorsRequest(suite="smoke-pass"))


def test_review_labels_are_recorded_and_grow_the_anchor_set(evaluator):
    report = run(evaluator, "olivia", "bot:v1")
    queue = items(evaluator, "rita", unlabelled_only=True)
    assert len(queue) == 2  # review_sample_size, stratified: one per tag
    assert {i.report_id for i in queue} == {report.id}
    assert {tuple(i.tags) for i in queue} == {("domain",), ("policy",)}
    first, second = queue
    assert first.prompt.startswith("[system] You are the router support assistant.")
    assert first.model_version_id == "bot:v1" and first.suite_version == report.suite_version

    before = anchors(evaluator)
    assert (before.items, before.from_reviews) == (3, 0)
    calibration = evaluator.stub("vic").GetJudgeCalibration(
        evaluation_pb2.GetJudgeCalibrationRequest(suite="smoke-pass")
    )
    assert (calibration.judge, calibration.anchors, calibration.trusted) == (
        "rule:token-f1",
        3,
        False,
    )
    assert calibration.anchor_set_version == before.version == report.anchor_set_version
    assert "3 anchor items < min_anchors 10" in calibration.reasons
    assert list(calibration.human_scores) == [a["human_score"] for a in ANCHORS]  # by id
    assert len(calibration.judge_scores) == 3 and calibration.within_one >= 0

    labelled = label(evaluator, "rita", first.id, score=2, text="unhelpful", comment="gibberish")
    assert (labelled.score, labelled.label, labelled.comment, labelled.labelled_by) == (
        2.0,
        "unhelpful",
        "gibberish",
        "rita",
    )
    label(evaluator, "rita", second.id, text="wrong-reference")  # no score: no anchor
    assert items(evaluator, "rita", unlabelled_only=True) == []

    grown = anchors(evaluator)
    assert (grown.items, grown.from_reviews) == (4, 1)
    assert grown.version != before.version
    rows = [json.loads(line) for line in grown.jsonl.decode().splitlines()]
    added = next(r for r in rows if r["id"] == first.id)
    assert added["human_score"] == 2 and added["labelled_by"] == "rita"
    assert added["source"] == f"review:{report.id}/{first.case_id}"
    calibrated = evaluator.stub("vic").GetJudgeCalibration(
        evaluation_pb2.GetJudgeCalibrationRequest(suite="smoke-pass")
    )
    assert calibrated.anchors == 4 and calibrated.anchor_set_version == grown.version

    # Labelling again replaces the label; taking the score away shrinks the set again.
    label(evaluator, "rita", first.id, score=4)
    assert (
        json.loads(
            next(
                line for line in anchors(evaluator).jsonl.decode().splitlines() if first.id in line
            )
        )["human_score"]
        == 4
    )
    label(evaluator, "rita", first.id, text="skip")
    assert anchors(evaluator).items == 3

    # The next evaluation is calibrated on the grown set.
    label(evaluator, "rita", second.id, score=1)
    later = run(evaluator, "olivia", "bot:v2")
    assert later.anchor_set_version == anchors(evaluator).version != report.anchor_set_version

    # Another tenant neither sees nor grows acme's anchors.
    assert anchors(evaluator, "mallory").items == 3


def test_a_label_score_must_be_1_to_5(evaluator):
    run(evaluator, "olivia", "bot:v1")
    item = items(evaluator, "rita")[0]
    for score in (6, 2.5, -1, float("nan")):
        error = rpc_error(lambda s=score: label(evaluator, "rita", item.id, score=s))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, score
    empty = rpc_error(lambda: label(evaluator, "rita", item.id))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT  # neither a score nor a label


def test_roles_and_tenants(evaluator):
    report = run(evaluator, "trent", "bot:v1")  # trainers may evaluate, like operators
    item = items(evaluator, "rita")[0]

    def code(who, call):
        return rpc_error(lambda: call(evaluator.stub(who))).code()

    denied = grpc.StatusCode.PERMISSION_DENIED
    request = evaluation_pb2.RunEvaluationRequest(model_version_id="bot:v1")
    assert code("vic", lambda s: s.RunEvaluation(request)) == denied
    assert code("rita", lambda s: s.RunEvaluation(request)) == denied
    assert code(None, lambda s: s.RunEvaluation(request)) == grpc.StatusCode.UNAUTHENTICATED
    label_request = evaluation_pb2.SubmitReviewLabelRequest(item_id=item.id, score=3)
    for who in ("trent", "olivia", "vic"):
        assert code(who, lambda s: s.SubmitReviewLabel(label_request)) == denied
    upload = evaluation_pb2.UploadSuiteRequest()
    for who in ("trent", "rita", "vic"):
        assert code(who, lambda s: s.UploadSuite(upload)) == denied
    # Every role of the tenant reads.
    for who in ("vic", "rita", "trent", "olivia"):
        stub = evaluator.stub(who)
        assert stub.GetReport(evaluation_pb2.GetReportRequest(id=report.id)).id == report.id
        assert len(stub.ListReviewItems(evaluation_pb2.ListReviewItemsRequest()).items) == 2

    # Another tenant: acme's report and review item do not exist for globex...
    not_found = grpc.StatusCode.NOT_FOUND
    assert (
        code("mallory", lambda s: s.GetReport(evaluation_pb2.GetReportRequest(id=report.id)))
        == not_found
    )
    assert code("mallory", lambda s: s.SubmitReviewLabel(label_request)) == not_found
    assert evaluator.stub("mallory").ListReports(evaluation_pb2.ListReportsRequest()).reports == []
    assert items(evaluator, "mallory") == []
    # ...and it may not evaluate acme's versions (the real registry answers NOT_FOUND).
    assert code("mallory", lambda s: s.RunEvaluation(request)) in (denied, not_found)
    mine = run(evaluator, "mallory", "gx:v1")
    assert mine.tenant == "globex"
    assert (
        code("olivia", lambda s: s.GetReport(evaluation_pb2.GetReportRequest(id=mine.id)))
        == not_found
    )
    # Admin reads every tenant's.
    everything = evaluator.stub("root").ListReports(evaluation_pb2.ListReportsRequest())
    assert {r.tenant for r in everything.reports} == {"acme", "globex"}

    # The caller's own key went on to the registry.
    assert any(
        ("authorization", f"Bearer {evaluator.keys['trent']}") in c
        for c in evaluator.registry.credentials
    )


def test_bad_arguments_name_the_field(evaluator):
    def field_of(**fields):
        error = rpc_error(
            lambda: evaluator.stub("olivia").RunEvaluation(
                evaluation_pb2.RunEvaluationRequest(**fields)
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        return dict(error.trailing_metadata()).get("posttrain-field")

    assert field_of(model_version_id="") == "model_version_id"
    assert field_of(model_version_id="bot") == "model_version_id"
    assert field_of(model_version_id="bot:v1", seed=-1) == "seed"
    assert field_of(model_version_id="bot:v1", use_case="Not A Use Case") == "use_case"
    assert field_of(model_version_id="bot:v1", suite_version="abc") == "suite"
    assert (
        field_of(model_version_id="bot:v1", suite="smoke-pass", suite_version="xyz")
        == "suite_version"
    )
    missing = rpc_error(lambda: run(evaluator, "olivia", "bot:v1", suite="no-such-suite"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    unknown = rpc_error(lambda: run(evaluator, "olivia", "nobody:v1"))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
