import json
import math

from posttrain.demo.report import DemoReport, render_html, write_report


def _arm(name: str, success: float) -> dict:
    return {
        "variant": name,
        "requests": 32,
        "success_rate": success,
        "success_ci_low": success - 0.1,
        "success_ci_high": min(1.0, success + 0.1),
        "policy_incident_rate": 0.25,
        "policy_incident_ci_low": 0.1,
        "policy_incident_ci_high": 0.4,
        "intervention_rate": 1 - success,
        "latency_p50_ms": 812.0,
        "cost_per_successful_task": math.nan,
    }


def _report() -> DemoReport:
    return DemoReport(
        started_at="2026-11-29T19:00:00+00:00",
        duration_s=600,
        steps=[("gate verdict", "GATE_VERDICT_PASS")],
        loss=[(1, 3.2), (2, 2.5), (3, 1.1)],
        eval_loss=[(2, 2.0)],
        verdict="GATE_VERDICT_PASS",
        reasons=["pass_rate 0.80 >= 0.50"],
        comparison={
            "regex_match": {"base": 0.0, "tuned": 0.9},
            "perplexity": {"base": 9.5, "tuned": 3.1},
        },
        samples=[
            {
                "prompt": "How do I <reset>?",
                "base": "Sure!",
                "tuned": "ANSWER: Hold RESET | REF-KB-101",
            }
        ],
        experiment={
            "verdict": "tuned wins on success_rate",
            "arms": [_arm("base", 0.1), _arm("tuned", 0.7)],
        },
    )


def test_html_has_every_section_with_plots_and_escaped_text(tmp_path):
    path = write_report(_report(), tmp_path / "out")
    page = path.read_text()
    assert path.name == "demo_report.html"
    # loss curve, base vs tuned bars, A/B arms: three embedded PNGs
    assert page.count("data:image/png;base64,") == 3
    assert "How do I &lt;reset&gt;?" in page and "<reset>" not in page
    assert "GATE_VERDICT_PASS" in page and "tuned wins on success_rate" in page
    assert "<td>tuned</td><td>32</td><td>70.0%</td>" in page
    assert "<td>perplexity</td><td>9.500</td><td>3.100</td>" in page
    saved = json.loads((tmp_path / "out" / "demo_report.json").read_text())
    assert saved["loss"] == [[1, 3.2], [2, 2.5], [3, 1.1]]
    assert [a["variant"] for a in saved["experiment"]["arms"]] == ["base", "tuned"]


def test_empty_parts_say_so_instead_of_plotting():
    page = render_html(DemoReport())
    assert "data:image/png" not in page
    assert page.count("nothing to plot") == 3
