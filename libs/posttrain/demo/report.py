"""The demo's HTML report: one self-contained file (plots embedded as PNG) with what the
run did: the loss curve, base vs tuned on the evaluation suite, the answers the gateway
gave, and the A/B test's arms. Built from plain data the demo collected (DemoReport), so
it can be rendered again from demo_report.json.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The whole-suite numbers shown side by side, in this order (0..1, judge_score /5).
COMPARED_METRICS = (
    "pass_rate",
    "regex_match",
    "refusal",
    "token_f1",
    "rouge_l",
    "exact_match",
    "tool_call_valid",
    "judge_score",
)


@dataclass
class DemoReport:
    started_at: str = ""
    duration_s: float = 0.0
    steps: list[tuple[str, str]] = field(default_factory=list)  # (what, result)
    loss: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)
    eval_loss: list[tuple[int, float]] = field(default_factory=list)
    verdict: str = ""
    reasons: list[str] = field(default_factory=list)
    # metric name -> {"base": value, "tuned": value}
    comparison: dict[str, dict[str, float]] = field(default_factory=dict)
    samples: list[dict[str, str]] = field(default_factory=list)  # prompt, base, tuned
    experiment: dict[str, Any] = field(default_factory=dict)  # verdict, arms: [...]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, allow_nan=True)


def _png(figure) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(out.getvalue()).decode("ascii")


def loss_png(report: DemoReport) -> str | None:
    from matplotlib.figure import Figure

    if not report.loss:
        return None
    figure = Figure(figsize=(6.5, 3.2))
    axes = figure.add_subplot()
    axes.plot(*zip(*report.loss, strict=True), label="training loss", color="#2e86c1")
    if report.eval_loss:
        axes.plot(
            *zip(*report.eval_loss, strict=True),
            "o--",
            label="held-out loss",
            color="#e67e22",
        )
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title("LoRA fine-tuning")
    axes.grid(alpha=0.3)
    axes.legend()
    return _png(figure)


def comparison_png(report: DemoReport) -> str | None:
    from matplotlib.figure import Figure

    names = [n for n in COMPARED_METRICS if n in report.comparison]
    if not names:
        return None
    figure = Figure(figsize=(max(6.0, 1.0 * len(names) + 2), 3.4))
    axes = figure.add_subplot()
    xs = range(len(names))
    for offset, arm, color in ((-0.2, "base", "#aab7b8"), (0.2, "tuned", "#1e8449")):
        values = [report.comparison[n].get(arm, math.nan) for n in names]
        values = [v / 5 if n == "judge_score" else v for n, v in zip(names, values, strict=True)]
        axes.bar([x + offset for x in xs], values, 0.4, label=arm, color=color)
    axes.set_xticks(
        list(xs), [f"{n} (/5)" if n == "judge_score" else n for n in names], rotation=30, ha="right"
    )
    axes.set_ylim(0, 1.05)
    axes.set_title("evaluation suite: base vs tuned")
    axes.grid(axis="y", alpha=0.3)
    axes.legend()
    return _png(figure)


def experiment_png(report: DemoReport) -> str | None:
    from matplotlib.figure import Figure

    arms = report.experiment.get("arms") or []
    if not arms:
        return None
    figure = Figure(figsize=(6.5, 3.2))
    axes = figure.add_subplot()
    names = [a["variant"] for a in arms]
    series = (
        ("success rate", "success_rate", "success_ci_low", "success_ci_high", "#1e8449"),
        (
            "policy incidents",
            "policy_incident_rate",
            "policy_incident_ci_low",
            "policy_incident_ci_high",
            "#c0392b",
        ),
    )
    for i, (label, key, low, high, color) in enumerate(series):
        xs = [j + (i - 0.5) * 0.38 for j in range(len(arms))]
        values = [a[key] for a in arms]
        errors = [
            [max(0.0, a[key] - a[low]) for a in arms],
            [max(0.0, a[high] - a[key]) for a in arms],
        ]
        axes.bar(xs, values, 0.38, yerr=errors, capsize=4, label=label, color=color)
    axes.set_xticks(range(len(arms)), names)
    axes.set_ylim(0, 1.05)
    axes.set_title("A/B test (95% Wilson intervals)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend()
    return _png(figure)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(data: str | None, alt: str) -> str:
    if data is None:
        return f"<p><em>{html.escape(alt)}: nothing to plot</em></p>"
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _num(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def render_html(report: DemoReport) -> str:
    arms = report.experiment.get("arms") or []
    arm_rows = [
        [
            a["variant"],
            str(a["requests"]),
            f"{a['success_rate']:.1%}",
            f"{a['policy_incident_rate']:.1%}",
            f"{a['intervention_rate']:.1%}",
            f"{a['latency_p50_ms']:.0f}",
            _num(a["cost_per_successful_task"]),
        ]
        for a in arms
    ]
    comparison_rows = [
        [n, _num(v.get("base", math.nan)), _num(v.get("tuned", math.nan))]
        for n, v in report.comparison.items()
    ]
    sections = [
        "<h1>posttrain demo</h1>",
        f"<p>started {html.escape(report.started_at)}, took {report.duration_s:.0f} s</p>",
        "<h2>What happened</h2>",
        _table(["step", "result"], [list(s) for s in report.steps]),
        "<h2>Training</h2>",
        _img(loss_png(report), "loss curve"),
        "<h2>Evaluation: base vs tuned</h2>",
        f"<p>release gate: <strong>{html.escape(report.verdict)}</strong></p>",
        "<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in report.reasons) + "</ul>",
        _img(comparison_png(report), "base vs tuned"),
        _table(["metric (whole suite)", "base", "tuned"], comparison_rows),
        "<h2>Answers through the gateway</h2>",
        _table(
            ["question", "base", "tuned"],
            [[s["prompt"], s["base"], s["tuned"]] for s in report.samples],
        ),
        "<h2>A/B test in live traffic (simulated users)</h2>",
        f"<p>verdict: <strong>{html.escape(str(report.experiment.get('verdict', '')))}"
        "</strong></p>",
        _img(experiment_png(report), "A/B arms"),
        _table(
            [
                "arm",
                "requests",
                "success",
                "policy incidents",
                "interventions",
                "p50 ms",
                "cost / successful task",
            ],
            arm_rows,
        ),
    ]
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:left;vertical-align:top;font-size:14px}"
    )
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>posttrain demo</title>'
        f"<style>{style}</style></head><body>{''.join(sections)}</body></html>"
    )


def write_report(report: DemoReport, folder: Path) -> Path:
    """demo_report.html and demo_report.json in `folder`; returns the HTML path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "demo_report.json").write_text(report.to_json())
    path = folder / "demo_report.html"
    path.write_text(render_html(report))
    return path
