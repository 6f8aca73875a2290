"""EvaluationService over gRPC, on SQLite and PostgreSQL, with tiny models in real S3 and
a stand-in registry: the release gate both ways, reproducibility, reports as artifacts,
suites (row-level refusals), regression against production, unloadable models."""

from __future__ import annotations

import json

import grpc
from evaluator_helpers import (
    LATENCY,
    metric_table,
    outbox,
    rpc_error,
    suite_files,
    upload_request,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from posttrain.evaluation import EvaluationResult
from posttrain.evaluator.tables import ReportRow
from posttrain.events import topics
from posttrain.rpc import field_violations
from posttrain.storage import ArtifactRef
from posttrain.v1 import common_pb2, evaluation_pb2

PASS, FAIL = common_pb2.GATE_VERDICT_PASS, common_pb2.GATE_VERDICT_FAIL


def run(env, who: str, model_version_id: str, **fields) -> evaluation_pb2.EvaluationReport:
    return env.stub(who).RunEvaluation(
        evaluation_pb2.RunEvaluationRequest(model_version_id=model_version_id, **fields)
    )


def report_count(env) -> int:
    with Session(env.engine) as session:
        return session.scalar(select(func.count()).select_from(ReportRow))


def stored_result(env, report: evaluation_pb2.EvaluationReport) -> EvaluationResult:
    return EvaluationResult.from_json(
        env.store.get_bytes(ArtifactRef.from_proto(report.json_report))
    )


def test_a_model_that_meets_the_gate_passes_and_one_that_does_not_fails(evaluator, artifacts):
    passed = run(evaluator, "olivia", "bot:v1", suite="smoke-pass")
    assert passed.verdict == PASS, passed.reasons
    assert "min_metric regex_match@overall: 1 >= 1" in passed.reasons
    assert (
        "regression not checked: no production alias of tenant 'acme' serves a version of 'bot'"
        in passed.notes
    )
    assert (passed.tenant, passed.model_version_id, passed.suite) == (
        "acme",
        "bot:v1",
        "smoke-pass",
    )
    assert passed.trigger == "RunEvaluation" and passed.requested_by == "olivia"
    assert passed.judge == "rule:token-f1" and not passed.judge_trusted  # 3 anchors < 10
    assert any("untrusted" in n or "anchor items" in n for n in passed.notes)

    failed = run(evaluator, "trent", "bot:v1", suite="smoke-fail")
    assert failed.verdict == FAIL
    assert len(failed.reasons) == 1 and failed.reasons[0].startswith(
        "min_metric token_f1@overall: "
    )
    assert failed.reasons[0].endswith("< 0.99")

    # Each report: one evaluation.completed, with its verdict, metrics and the artifact.
    events = outbox(evaluator.engine, topics.EVALUATION_COMPLETED)
    assert [(e.report_id, e.verdict) for e in events] == [(passed.id, PASS), (failed.id, FAIL)]
    assert events[0].metrics["regex_match"] == 1.0
    assert events[0].metrics["regex_match@policy"] == 1.0
    assert events[0].report.uri.endswith(f"evaluations/acme/bot:v1/{passed.id}/manifest.json")

    # The artifact: report.json (the result as run) and report.html (readable).
    result = stored_result(evaluator, passed)
    assert result.report_id == passed.id and result.verdict == "PASS"
    assert [c.case_id for c in result.cases] == ["reset", "lights", "neighbour", "secret"]
    assert result.provenance.adapter == artifacts.adapter.sha256  # the LoRA, on its base
    assert result.provenance.prompt_template_revision == "tpl-1"
    html = evaluator.store.get_bytes(ArtifactRef.from_proto(passed.html_report)).decode()
    assert "PASS" in html and passed.id in html

    # Read back, as stored.
    assert evaluator.stub("vic").GetReport(evaluation_pb2.GetReportRequest(id=passed.id)) == passed
    listed = evaluator.stub("vic").ListReports(
        evaluation_pb2.ListReportsRequest(model_version_id="bot:v1")
    )
    assert {r.id for r in listed.reports} == {passed.id, failed.id}


def test_the_same_seed_gives_the_same_numbers_and_asking_again_gives_the_same_report(evaluator):
    first = run(evaluator, "trent", "bot:v1", seed=7)
    # twin:v1 is the same adapter registered again: evaluated from scratch, same seed.
    second = run(evaluator, "trent", "twin:v1", seed=7)
    assert first.id != second.id  # another model version, another report
    quality = lambda r: {  # noqa: E731
        (m.name, m.tag): m.value for m in r.metrics if m.name not in LATENCY
    }
    assert quality(first) == quality(second)
    assert ("token_f1", "domain") in quality(first) and ("cost_total", "") in quality(first)
    a, b = stored_result(evaluator, first), stored_result(evaluator, second)
    assert [(c.case_id, c.output) for c in a.cases] == [(c.case_id, c.output) for c in b.cases]
    assert first.seed == 7 and first.suite == "smoke-pass"  # the configured suite

    # The same model version, suite version and seed again: the report already made.
    again = run(evaluator, "olivia", "bot:v1", seed=7)
    assert again.id == first.id and again == first
    assert report_count(evaluator) == 2
    assert len(outbox(evaluator.engine, topics.EVALUATION_COMPLETED)) == 2

    # Another seed is another evaluation (greedy decoding: the same outputs).
    other = run(evaluator, "olivia", "bot:v1", seed=8)
    assert other.id != first.id and quality(other) == quality(first)


def test_a_model_that_cannot_be_loaded_gets_a_fail_report_that_says_why(evaluator):
    report = run(evaluator, "olivia", "broken:v1")
    assert report.verdict == FAIL
    assert len(report.reasons) == 1
    assert report.reasons[0].startswith("model could not be loaded: ")
    assert "no-such-architecture" in report.reasons[0]
    assert not report.metrics
    (event,) = outbox(evaluator.engine, topics.EVALUATION_COMPLETED)
    assert (event.model_version_id, event.verdict) == ("broken:v1", FAIL)
    assert event.reasons == report.reasons
    assert stored_result(evaluator, report).cases == []
    # Asking again does not try again: that report stands (another seed would).
    assert run(evaluator, "olivia", "broken:v1").id == report.id


def test_regression_against_production_compares_per_tag(evaluator):
    # bot:v1 is production of use case "support"; it has no report on this suite version
    # yet, so evaluating bot:v2 first evaluates bot:v1 as the baseline.
    evaluator.registry.set_production("support", "bot:v1")
    candidate = run(evaluator, "olivia", "bot:v2")
    reports = evaluator.stub("vic").ListReports(evaluation_pb2.ListReportsRequest()).reports
    baseline = next(r for r in reports if r.model_version_id == "bot:v1")
    assert baseline.trigger == "baseline" and "baseline for bot:v2" in baseline.requested_by
    assert (candidate.production_model_version_id, candidate.production_report_id) == (
        "bot:v1",
        baseline.id,
    )
    table = metric_table(candidate)
    for tag in ("", "domain", "policy"):
        for name in ("token_f1", "regex_match", "pass_rate"):
            metric = table[(name, tag)]
            assert metric.has_production_value, (name, tag)
            assert metric.production_value == metric_table(baseline)[(name, tag)].value
    assert any(n.startswith("compared with production version bot:v1") for n in candidate.notes)
    result = stored_result(evaluator, candidate)
    assert set(result.deltas) == {"overall", "domain", "policy"}
    assert result.deltas["domain"]["regex_match"] == 0.0
    assert any(c.rule == "max_regression" and c.counted for c in result.gate.checks)
    # Both reports announced, the baseline first.
    events = outbox(evaluator.engine, topics.EVALUATION_COMPLETED)
    assert [e.model_version_id for e in events] == ["bot:v1", "bot:v2"]

    # A later candidate reuses the production report: no second baseline.
    evaluator.registry.add_version(
        "bot:v3",
        ArtifactRef.from_proto(evaluator.registry.versions["bot:v2"].artifacts[0]),
        kind=common_pb2.MODEL_KIND_FULL,
    )
    later = run(evaluator, "olivia", "bot:v3")
    assert later.production_report_id == baseline.id
    assert report_count(evaluator) == 3

    # Evaluating the production version itself compares with nothing.
    own = run(evaluator, "olivia", "bot:v1", seed=5)
    assert not own.production_report_id
    assert (
        "regression not checked: bot:v1 is the production version of use case 'support'"
        in own.notes
    )


def test_a_use_case_named_in_the_request_picks_its_production(evaluator):
    evaluator.registry.set_production("support", "bot:v1")
    evaluator.registry.set_production("faq", "base:v1")
    report = run(evaluator, "olivia", "twin:v1", use_case="faq")
    assert report.production_model_version_id == "base:v1"
    lonely = run(evaluator, "olivia", "bot:v2", use_case="billing")
    assert not lonely.production_report_id
    assert "regression not checked: use case 'billing' has no production version" in lonely.notes


def test_a_bad_suite_is_refused_with_row_level_violations(evaluator):
    files = suite_files("smoke-bad")
    cases = files["cases.jsonl"].decode().splitlines()
    cases[1] = json.dumps({"id": "no-prompt", "tags": ["domain"]})
    cases[2] = json.dumps({"id": "bad-metric", "prompt": "Hi", "metrics": ["bleu"]})
    cases.append("{not json")
    files["cases.jsonl"] = ("\n".join(cases) + "\n").encode()
    files["gate.yaml"] = b"name: g\nmin_metricz: {token_f1: 0.5}\n"
    files["anchors.jsonl"] = b'{"id": "a", "prompt": "p", "answer": "x", "human_score": 9}\n'
    error = rpc_error(lambda: evaluator.stub("olivia").UploadSuite(upload_request(files)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = {(v.row, v.field, v.code) for v in field_violations(error)}
    assert (2, "cases.jsonl:prompt", "missing_field") in found
    assert (3, "cases.jsonl:metrics[0]", "unknown_metric") in found
    assert (5, "cases.jsonl", "bad_json") in found
    assert (0, "gate.yaml:min_metricz", "bad_config") in found
    assert (1, "anchors.jsonl:human_score", "bad_anchor") in found
    assert "row 2 'cases.jsonl:prompt'" in error.details()

    missing = rpc_error(
        lambda: evaluator.stub("olivia").UploadSuite(
            upload_request({"suite.yaml": b"name: x\ngate_policy: gate.yaml\n", "notes.txt": b""})
        )
    )
    assert {(v.field, v.code) for v in field_violations(missing)} == {
        ("suite.yaml:cases", "missing_file"),
        ("suite.yaml:gate_policy", "missing_file"),
        ("notes.txt", "unexpected_file"),
    }
    listed = evaluator.stub("vic").ListSuites(evaluation_pb2.ListSuitesRequest())
    assert "smoke-bad" not in {s.name for s in listed.suites}


def test_suites_are_versioned_uploads_and_immutable(evaluator):
    files = suite_files("smoke-new")
    first = evaluator.stub("olivia").UploadSuite(upload_request(files))
    assert (first.name, first.cases, first.anchors, first.already_existed) == (
        "smoke-new",
        4,
        3,
        False,
    )
    assert first.tags == ["domain", "policy"] and first.gate_policy.startswith("smoke-release@")
    assert first.artifact.uri.endswith(f"suites/smoke-new/{first.version}/manifest.json")
    assert evaluator.stub("olivia").UploadSuite(upload_request(files)).already_existed
    # Same header and cases, another gate: the version would lie about its gate.
    files["gate.yaml"] = b"name: other\nmin_metrics: {token_f1: 0.1}\n"
    clash = rpc_error(lambda: evaluator.stub("olivia").UploadSuite(upload_request(files)))
    assert clash.code() == grpc.StatusCode.ALREADY_EXISTS and "label" in clash.details()
    # A new label is a new version; the latest is what a run without a version gets.
    newer = evaluator.stub("olivia").UploadSuite(
        upload_request(
            suite_files(
                "smoke-new", label="v2", gate={"name": "other", "min_metrics": {"token_f1": 0.1}}
            )
        )
    )
    assert newer.version != first.version
    report = run(evaluator, "olivia", "bot:v1", suite="smoke-new")
    assert report.suite_version == newer.version and report.verdict == FAIL
    pinned = run(evaluator, "olivia", "bot:v1", suite="smoke-new", suite_version=first.version[:10])
    assert pinned.suite_version == first.version and pinned.verdict == PASS
    # The shipped suite is listed (stored on first use) like any other.
    suites = evaluator.stub("vic").ListSuites(evaluation_pb2.ListSuitesRequest(name="support"))
    assert [(s.name, s.builtin, s.cases) for s in suites.suites] == [("support", True, 39)]
