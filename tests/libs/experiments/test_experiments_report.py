"""The report as strict JSON, as the gateway proto, and as HTML with the chart embedded plus
a PNG next to the JSON."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import pytest

from posttrain.experiments import (
    AnalysisConfig,
    InferenceRecord,
    build_report,
    render_html,
    write_report,
)
from posttrain.v1 import gateway_pb2

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VARIANTS = [("base", 0.4), ("adapter-v3", 0.3), ("adapter-v4", 0.3)]


def records() -> list[InferenceRecord]:
    rows = []
    plan = {"base": (240, 120, 2), "adapter-v3": (240, 156, 3), "adapter-v4": (240, 0, 1)}
    for variant, (n, successes, incidents) in plan.items():
        for i in range(n):
            rows.append(
                InferenceRecord(
                    request_id=f"{variant}-{i}",
                    variant=variant,
                    latency_ms=100.0 + (i % 50),
                    prompt_tokens=20,
                    completion_tokens=40,
                    cost=0.002,
                    success=i < successes,
                    policy_incident=i < incidents,
                    human_intervention=i % 10 == 0,
                    judge_score=0.5 + (i % 5) / 10 if variant != "adapter-v4" else None,
                )
            )
    rows.append(InferenceRecord("late", "base", 120.0, cost=0.002))  # feedback not in yet
    return rows


@pytest.fixture(scope="module")
def report():
    return build_report(
        "exp-7",
        VARIANTS,
        records(),
        config=AnalysisConfig(min_sample=200),
        stopped={"adapter-v4"},
        max_policy_incident_rate=0.02,
    )


def test_json_is_strict_and_carries_stats_comparisons_and_verdict(report) -> None:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in JSON")

    data = json.loads(report.to_json(), parse_constant=refuse)
    assert data["control"] == "base" and data["primary_metric"] == "success_rate"
    assert data["stopped"] == ["adapter-v4"]
    assert data["verdict"]["winner"] == "adapter-v3"
    assert data["verdict"]["sample_sufficient"] is True
    base, v3, v4 = data["variants"]
    assert (base["requests"], base["feedback_count"], base["share"]) == (241, 240, 0.4)
    assert base["success"]["rate"] == 0.5 and base["vs_control"] == []
    assert v3["success"]["rate"] == 0.65
    assert base["cost_per_successful_task"] == pytest.approx(240 * 0.002 / 120)
    assert v4["cost_per_successful_task"] is None  # infinite: no success
    assert v4["stopped"] is True and v4["judge_score"]["mean"] is None
    diff = {d["metric"]: d for d in v3["vs_control"]}
    assert diff["success_rate"]["difference"] == pytest.approx(0.15)
    assert diff["judge_score"]["difference"] == pytest.approx(0.0)


def test_proto_carries_the_same_numbers(report) -> None:
    message = report.to_proto(html_uri="s3://reports/exp-7/report.html")
    message = gateway_pb2.ExperimentReport.FromString(message.SerializeToString())
    assert message.experiment.id == "exp-7"
    assert [(v.name, v.share) for v in message.experiment.variants] == VARIANTS
    assert list(message.experiment.stopped_arms) == ["adapter-v4"]
    assert (message.control, message.winner, message.sample_sufficient) == (
        "base",
        "adapter-v3",
        True,
    )
    assert message.verdict == report.analysis.verdict.text
    assert message.p_value == pytest.approx(report.analysis.verdict.p_value)
    base, v3, v4 = message.variants
    assert (base.requests, base.feedback_count, base.successes) == (241, 240, 120)
    assert base.success_rate == 0.5 and len(base.vs_control) == 0
    assert v3.judge_score.n == 240 and not v4.HasField("judge_score")
    assert math.isinf(v4.cost_per_successful_task) and v4.stopped
    success = next(d for d in v3.vs_control if d.metric == "success_rate")
    assert success.difference == pytest.approx(0.15) and success.control == "base"
    rating = next(d for d in v3.vs_control if d.metric == "rating")
    assert math.isnan(rating.difference)  # nobody rated


def test_html_and_png_are_written_next_to_the_json(report, tmp_path: Path) -> None:
    files = write_report(report, tmp_path / "exp-7")
    assert {p.name for p in (tmp_path / "exp-7").iterdir()} == {
        "report.json",
        "report.html",
        "report.png",
    }
    png = files.png.read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    page = files.html.read_text()
    embedded = re.search(r'<img id="chart"[^>]*src="data:image/png;base64,([^"]+)"', page)
    assert embedded and base64.b64decode(embedded.group(1)) == png
    assert "adapter-v3" in page and "Holm-adjusted p" in page
    assert "wins on success rate" in page
    assert json.loads(files.json.read_text())["experiment_id"] == "exp-7"


def test_the_judge_behind_the_scores_is_named_in_every_form(tmp_path: Path) -> None:
    judged = build_report("exp-8", VARIANTS, records(), judges=["openai:judge-m@http://j/v1@a1b2"])
    assert judged.to_dict()["judges"] == ["openai:judge-m@http://j/v1@a1b2"]
    assert list(judged.to_proto().judges) == ["openai:judge-m@http://j/v1@a1b2"]
    page = write_report(judged, tmp_path).html.read_text()
    assert "Judge score (1..5): openai:judge-m@http://j/v1@a1b2" in page
    v3 = judged.analysis.variants["adapter-v3"].judge_score
    assert f"{v3.mean:.3g} [{v3.ci_low:.3g}, {v3.ci_high:.3g}] (n=240)" in page
    unjudged = build_report("exp-9", VARIANTS, [InferenceRecord("r", "base", 1.0)])
    assert unjudged.to_dict()["judges"] == [] and not unjudged.to_proto().judges
    assert "no judge graded these requests" in render_html(unjudged, b"")


def test_chart_is_deterministic_and_names_are_escaped(tmp_path: Path) -> None:
    rows = [
        InferenceRecord(f"r{i}", v, 10.0, success=i % 2 == 0)
        for i, v in enumerate(["<b>", "x&y"] * 10)
    ]
    report = build_report("exp-<8>", [("<b>", 0.5), ("x&y", 0.5)], rows)
    a, b = write_report(report, tmp_path / "a"), write_report(report, tmp_path / "b")
    assert a.png.read_bytes() == b.png.read_bytes()
    page = a.html.read_text()
    assert "<b>" not in page.split("<body>")[1]
    assert "&lt;b&gt;" in page and "x&amp;y" in page and "exp-&lt;8&gt;" in page
    assert "insufficient data: 10 of 200" in page
