"""`posttrain eval ...`: evaluations, reports and human review (evaluator service).

run, report, list, review, label; and for suites and the judge: upload-suite, suites,
calibration, anchors. Every command takes --json, --target (or
POSTTRAIN_EVALUATOR_TARGET) and --api-key (or POSTTRAIN_API_KEY); exit codes as in
posttrain.cli.common.
"""

from __future__ import annotations

import math
from pathlib import Path

import click

from posttrain.cli.common import (
    api_key_option,
    channel,
    grpc_errors,
    json_option,
    print_json,
    print_table,
    target_option,
)
from posttrain.v1 import common_pb2, evaluation_pb2, evaluation_pb2_grpc

VERDICTS = {
    common_pb2.GATE_VERDICT_PASS: "PASS",
    common_pb2.GATE_VERDICT_FAIL: "FAIL",
    common_pb2.GATE_VERDICT_UNSPECIFIED: "-",
}
suite_option = click.option("--suite", default="", help="suite name; default: the service's")
suite_version_option = click.option(
    "--suite-version", default="", help="suite version or 8+ char prefix; default: the latest"
)
limit_option = click.option("--limit", default=50, show_default=True)


def _stub(target: str, api_key: str) -> evaluation_pb2_grpc.EvaluationServiceStub:
    return evaluation_pb2_grpc.EvaluationServiceStub(channel(target, api_key))


@click.group("eval")
def eval_() -> None:
    """Evaluations, release-gate reports and human review (evaluator service)."""


@eval_.command()
@click.argument("model_version_id")
@suite_option
@suite_version_option
@click.option("--seed", default=0, help="0 = the service's configured seed")
@click.option("--use-case", default="", help="compare with this use case's production")
@click.option("--timeout", default=3600.0, show_default=True, help="seconds to wait")
@target_option("evaluator")
@api_key_option
@json_option
@grpc_errors
def run(model_version_id, suite, suite_version, seed, use_case, timeout, target, api_key, as_json):
    """Evaluate MODEL_VERSION_ID now (or get the report it already has for that suite
    version and seed) and print the release-gate verdict."""
    report = _stub(target, api_key).RunEvaluation(
        evaluation_pb2.RunEvaluationRequest(
            model_version_id=model_version_id,
            suite=suite,
            suite_version=suite_version,
            seed=seed,
            use_case=use_case,
        ),
        timeout=timeout,
    )
    _show_report(report, as_json, with_metrics=False)


@eval_.command()
@click.argument("report_id")
@target_option("evaluator")
@api_key_option
@json_option
@grpc_errors
def report(report_id, target, api_key, as_json):
    """One report: verdict, reasons, notes, every metric vs production, its artifacts."""
    found = _stub(target, api_key).GetReport(evaluation_pb2.GetReportRequest(id=report_id))
    _show_report(found, as_json, with_metrics=True)


@eval_.command("list")
@click.option("--model-version", default="", help="only reports of this model version")
@suite_option
@limit_option
@target_option("evaluator")
@api_key_option
@json_option
@grpc_errors
def list_(model_version, suite, limit, target, api_key, as_json):
    """Reports of your tenant, newest first."""
    resp = _stub(target, api_key).ListReports(
        evaluation_pb2.ListReportsRequest(
            model_version_id=model_version,
            suite=suite,
            page=common_pb2.PageRequest(page_size=limit),
        )
    )
    if as_json:
        print_json(list(resp.reports))
        return
    print_table(
        f"reports ({resp.page.total})",
        ["id", "model version", "suite", "version", "seed", "verdict", "judge", "vs production"],
        [
            [
                r.id,
                r.model_version_id,
                r.suite,
                r.suite_version[:12],
                r.seed,
                VERDICTS[r.verdict],
                f"{r.judge} ({'trusted' if r.judge_trusted else 'untrusted'})",
                r.production_model_version_id or "-",
            ]
            for r in resp.reports
        ],
    )


@eval_.command()
@click.option("--all", "everything", is_flag=True, help="labelled items too")
@click.option("--report", "report_id", default="", help="only items of this report")
@suite_option
@limit_option
@target_option("evaluator")
@api_key_option
@json_option
@grpc_errors
def review(everything, report_id, suite, limit, target, api_key, as_json):
    """The review queue: sampled outputs waiting for a label (all items with --all)."""
    resp = _stub(target, api_key).ListReviewItems(
        evaluation_pb2.ListReviewItemsRequest(
            unlabelled_only=not everything,
            report_id=report_id,
            suite=suite,
            page=common_pb2.PageRequest(page_size=limit),
        )
    )
    if as_json:
        print_json(list(resp.items))
        return
    if not resp.items:
        click.echo("nothing to review")
        return
    for item in resp.items:
        done = (
            f"labelled {item.score:g} {item.label!r} by {item.labelled_by}"
            if item.labelled_by
            else "unlabelled"
        )
        click.echo(
            f"{item.id}  {item.model_version_id}  case {item.case_id} [{', '.join(item.tags)}]  {done}"
        )
        click.echo(_indent("prompt", item.prompt[-400:]))
        click.echo(_indent("output", item.output[:400]))
        if item.reference:
            click.echo(_indent("reference", item.reference[:400]))
        click.echo("")
    click.echo(
        f"{len(resp.items)} of {resp.page.total}; label with: posttrain eval label ID --score 1..5"
    )


@eval_.command()
@click.argument("item_id")
@click.option("--score", type=click.IntRange(1, 5), default=None, help="1..5 on the suite's rubric")
@click.option("--label", "text", default="", help='free text, e.g. "wrong-reference"')
@click.option("--comment", default="")
@target_option("evaluator")
@api_key_option
@json_option
@grpc_errors
def label(item_id, score, text, comment, target, api_key, as_json):
    """Label a review item (rater). A scored label joins the suite's anchor set."""
    if score is None and not text:
        raise click.UsageError("give --score, --label or both")
    item = _stub(target, api_key).SubmitReviewLabel(
        evaluation_pb2.SubmitReviewLabelRequest(
            item_id=item_id, score=score or 0, label=text, comment=comment
        )
    )
    if as_json:
        print_json(item)
        return
    grows = " (added to the anchor set)" if item.score else ""
    click.echo(f"{item.id}: score {item.score:g} {item.label!r} by {item.labelled_by}{grows}")


# ------------------------------------------------------------------ suites and judge


@eval_.command("upload-suite")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@target_option("evaluator")
@api_key_option
@json_option
@grpc_errors
def upload_suite(folder, target, api_key, as_json):
    """Upload a suite folder (suite.yaml and the files it names) as a new version."""
    from posttrain.evaluator.suites import folder_files

    files = folder_files(folder)
    suite = _stub(target, api_key).UploadSuite(
        evaluation_pb2.UploadSuiteRequest(
            files=[evaluation_pb2.SuiteFile(path=p, content=c) for p, c in files.items()]
        )
    )
    if as_json:
        print_json(suite)
        return
    what = "already stored as" if suite.already_existed else "stored as"
    click.echo(f"{suite.name}: {what} version {suite.version[:12]} ({suite.label})")
    click.echo(
        f"  {suite.cases} cases, tags {', '.join(suite.tags) or '-'}; "
        f"gate {suite.gate_policy or 'none'}; {suite.anchors} seed anchors"
    )


@eval_.command()
@click.option("--name", default="", help="only versions of this suite")
@limit_option
@target_option("evaluator")
@api_key_option
@json_option
@grpc_errors
def suites(name, limit, target, api_key, as_json):
    """Stored suite versions, newest first per name."""
    resp = _stub(target, api_key).ListSuites(
        evaluation_pb2.ListSuitesRequest(name=name, page=common_pb2.PageRequest(page_size=limit))
    )
    if as_json:
        print_json(list(resp.suites))
        return
    print_table(
        f"suites ({resp.page.total})",
        ["name", "version", "label", "cases", "tags", "gate", "uploaded by"],
        [
            [
                s.name,
                s.version[:12],
                s.label,
                s.cases,
                ", ".join(s.tags),
                s.gate_policy.split("@")[0] or "-",
                s.uploaded_by,
            ]
            for s in resp.suites
        ],
    )


@eval_.command()
@suite_option
@suite_version_option
@target_option("evaluator")
@api_key_option
@json_option
@grpc_errors
def calibration(suite, suite_version, target, api_key, as_json):
    """How well the configured judge agrees with your tenant's anchor set."""
    c = _stub(target, api_key).GetJudgeCalibration(
        evaluation_pb2.GetJudgeCalibrationRequest(suite=suite, suite_version=suite_version)
    )
    if as_json:
        print_json(c)
        return
    trust = "trusted" if c.trusted else "NOT trusted"
    click.echo(f"judge {c.judge} ({c.judge_version}) on {c.suite}: {trust}, {c.anchors} anchors")
    if c.anchors:
        stats = ("exact_agreement", "within_one", "kappa", "weighted_kappa", "pearson", "spearman")
        click.echo("  " + ", ".join(f"{k} {_num(getattr(c, k))}" for k in stats))
    for reason in c.reasons:
        click.echo(f"  - {reason}")


@eval_.command()
@suite_option
@suite_version_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="write anchors.jsonl")
@target_option("evaluator")
@api_key_option
@json_option
@grpc_errors
def anchors(suite, suite_version, out, target, api_key, as_json):
    """The anchor set of a suite: its seed anchors plus your tenant's scored labels."""
    found = _stub(target, api_key).ExportAnchors(
        evaluation_pb2.ExportAnchorsRequest(suite=suite, suite_version=suite_version)
    )
    if out:
        out.write_bytes(found.jsonl)
    if as_json:
        print_json(found)
        return
    click.echo(
        f"{found.suite}: {found.items} anchor items ({found.from_reviews} from review), "
        f"version {found.version[:12] or '-'}" + (f"; written to {out}" if out else "")
    )


# ------------------------------------------------------------------ printing


def _show_report(r: evaluation_pb2.EvaluationReport, as_json: bool, *, with_metrics: bool) -> None:
    if as_json:
        print_json(r)
        return
    click.echo(f"{r.id}: {r.model_version_id} on {r.suite}@{r.suite_version[:12]} (seed {r.seed})")
    click.echo(f"  verdict {VERDICTS[r.verdict]}  gate {r.gate_policy or '-'}")
    for reason in r.reasons:
        click.echo(f"    - {reason}")
    judge = "trusted" if r.judge_trusted else "untrusted"
    click.echo(f"  judge {r.judge or '-'} ({judge})")
    if r.production_model_version_id:
        click.echo(
            f"  vs production {r.production_model_version_id} (report {r.production_report_id})"
        )
    for note in r.notes:
        click.echo(f"  note: {note}")
    rows = [
        [
            m.tag or "overall",
            m.name,
            _num(m.value),
            _num(m.production_value) if m.has_production_value else "-",
            f"{m.value - m.production_value:+.4g}" if m.has_production_value else "-",
        ]
        for m in r.metrics
        if with_metrics or not m.tag
    ]
    if rows:
        print_table("metrics", ["scope", "metric", "value", "production", "delta"], rows)
    click.echo(f"  report {r.json_report.uri or '-'}")
    click.echo(f"  html   {r.html_report.uri or '-'}")


def _num(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4g}"


def _indent(what: str, text: str) -> str:
    lines = text.splitlines() or [""]
    return "\n".join(f"    {what if i == 0 else '':<9} {line}" for i, line in enumerate(lines))
