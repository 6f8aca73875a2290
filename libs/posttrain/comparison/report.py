"""The comparison report: per candidate quality, training cost, artifact size, serving
implications and the gate verdict; the Pareto front of quality vs cost; the
recommendation with every rule it checked. JSON (`comparison_report.json`) and one
self-contained HTML file beside it (the Pareto chart embedded as PNG, like the
evaluation report), built from the JSON alone so either can be regenerated.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from posttrain.comparison.decide import cost_of, recommend
from posttrain.comparison.measurements import MEASURED, CandidateMeasurement, DecisionContext
from posttrain.comparison.rules import MEASURES, RuleSet
from posttrain.evaluation.report_html import _fmt, _png, _table

REPORT_FORMAT = "posttrain.comparison_report.v1"
JSON_NAME, HTML_NAME = "comparison_report.json", "comparison_report.html"


def pareto_front(
    candidates: Sequence[CandidateMeasurement], quality_metric: str, cost_measure: str
) -> list[str]:
    """Names of the measured candidates no other beats on both quality (higher) and cost
    (lower), cheapest first."""
    points = [
        (c.name, q, k)
        for c in candidates
        if c.outcome == MEASURED
        and (q := c.quality_of(quality_metric)) is not None
        and (k := cost_of(c, cost_measure)) is not None
    ]
    front = [
        (name, q, k)
        for name, q, k in points
        if not any(
            q2 >= q and k2 <= k and (q2 > q or k2 < k) for n2, q2, k2 in points if n2 != name
        )
    ]
    return [name for name, _, _ in sorted(front, key=lambda p: (p[2], -p[1]))]


def build_report(
    comparison: dict[str, Any],
    candidates: Sequence[CandidateMeasurement],
    context: DecisionContext,
    rules: RuleSet,
) -> dict[str, Any]:
    """The report as JSON-able data. `comparison`: what was compared (id, name, base
    model, dataset, budget...), copied as it is."""
    recommendation = recommend(candidates, context, rules)
    return {
        "format": REPORT_FORMAT,
        "comparison": comparison,
        "context": context.to_json(),
        "rules": {
            "source": rules.source,
            "quality_metric": rules.quality_metric,
            "cost_measure": rules.cost_measure,
            "prefer_gate_pass": rules.prefer_gate_pass,
        },
        "candidates": [c.to_json() for c in candidates],
        "pareto_front": pareto_front(candidates, rules.quality_metric, rules.cost_measure),
        "recommendation": recommendation.to_json(),
        "measure_descriptions": {name: m.description for name, m in MEASURES.items()},
        "suites": sorted({c.suite for c in candidates if c.suite}),
    }


def pareto_png(report: dict[str, Any]) -> str | None:
    """Quality vs training cost, one point per measured candidate, the front joined."""
    from matplotlib.figure import Figure

    quality, cost = report["rules"]["quality_metric"], report["rules"]["cost_measure"]
    points = [
        (c["name"], c["quality"].get(quality, c.get(quality)), c.get(cost))
        for c in report["candidates"]
        if c["outcome"] == MEASURED
    ]
    points = [(n, q, k) for n, q, k in points if q is not None and k is not None]
    if not points:
        return None
    front = set(report["pareto_front"])
    chosen = report["recommendation"]["candidate"]
    figure = Figure(figsize=(6.5, 4.2))
    axes = figure.add_subplot()
    for name, q, k in points:
        colour = "#1e8449" if name == chosen else "#2e86c1" if name in front else "#aab7b8"
        axes.scatter([k], [q], s=80 if name == chosen else 50, color=colour, zorder=3)
        axes.annotate(name, (k, q), textcoords="offset points", xytext=(6, 4), fontsize=8)
    on_front = sorted((k, q) for n, q, k in points if n in front)
    if len(on_front) > 1:
        axes.plot(*zip(*on_front, strict=True), color="#2e86c1", alpha=0.6, zorder=2)
    axes.set_xlabel(cost)
    axes.set_ylabel(quality)
    axes.set_title("quality vs training cost (line: Pareto front; green: recommended)")
    axes.grid(alpha=0.3)
    return _png(figure)


def _size(value: float | None) -> str:
    if value is None:
        return "&ndash;"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "&ndash;"


def _served(candidate: dict[str, Any], mode: str) -> str:
    """Its latency through Triton served that way (the evaluator's serving probe)."""
    served = (candidate.get("serving") or {}).get(mode)
    if not served:
        return "&ndash;"
    return f"{served['latency_p50_s'] * 1000:.0f} / {served['latency_p95_s'] * 1000:.0f} ms"


def render_html(report: dict[str, Any]) -> str:
    cmp, rec = report["comparison"], report["recommendation"]
    quality = report["rules"]["quality_metric"]
    esc = html.escape
    rows = []
    for c in report["candidates"]:
        share = c.get("trainable_share")
        latency = c.get("latency_p50_s")
        rows.append(
            [
                f"<b>{esc(c['name'])}</b>" if c["name"] == rec["candidate"] else esc(c["name"]),
                esc(c["method"]),
                esc(", ".join(f"{k}={v}" for k, v in sorted(c["method_config"].items()))),
                esc(c["outcome"])
                + (f"<br><small>{esc(c['error'][:200])}</small>" if c["error"] else ""),
                _fmt(c["quality"].get(quality)),
                _fmt(c.get("judge_score")),
                esc(c.get("gate_verdict") or "-"),
                _fmt(c.get("wall_time_s")),
                _fmt(c.get("train_tokens")),
                _size(c.get("peak_memory_bytes")),
                f"{_fmt(c.get('trainable_params'))}"
                + (f" ({share:.3%})" if share is not None else ""),
                _size(c.get("artifact_bytes")),
                esc(" / ".join(c.get("serving_options") or [])),
                "&ndash;" if latency is None else f"{latency * 1000:.0f} ms",
                _served(c, "adapter"),
                _served(c, "merged"),
            ]
        )
    candidates_table = _table(
        rows,
        [
            "candidate",
            "method",
            "config",
            "outcome",
            quality,
            "judge /5",
            "gate",
            "train s",
            "tokens",
            "peak memory",
            "trainable (of base)",
            "artifact",
            "serving",
            "latency p50",
            "served as adapter p50 / p95",
            "served merged p50 / p95",
        ],
    )
    metric_names = sorted({n for c in report["candidates"] for n in c["quality"]})
    metrics_table = _table(
        [
            [esc(n)] + [_fmt(c["quality"].get(n)) for c in report["candidates"]]
            for n in metric_names
        ],
        ["metric"] + [esc(c["name"]) for c in report["candidates"]],
    )
    rule_rows = []
    for r in rec["rules"]:
        conditions = "<br>".join(
            f"{esc(x['measure'])} {esc(x['op'])} {x['threshold']:g}: measured "
            f"{_fmt(x['measured'])} {'&#10003;' if x['held'] else '&#10007;'}"
            for x in r["conditions"]
        )
        rule_rows.append(
            [
                esc(r["kind"]),
                f"<b>{esc(r['name'])}</b>" if r["fired"] else esc(r["name"]),
                esc(r["recommend"]),
                conditions or "(always)",
                "<b>FIRED</b>" if r["fired"] else esc(r["note"] or "no"),
            ]
        )
    measures = _table(
        [
            [esc(n), _fmt(v), esc(report["measure_descriptions"].get(n, ""))]
            for n, v in rec["measures"].items()
        ],
        ["measure", "value", "what"],
    )
    chart = pareto_png(report)
    title = f"Comparison {esc(cmp.get('name', ''))} ({esc(str(cmp.get('id', ''))[:12])})"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }}
.rec {{ padding: .8em 1em; background: #eafaf1; border-left: 4px solid #1e8449; }}
table {{ border-collapse: collapse; margin: .5em 0 1.5em; font-size: 90%; }}
td, th {{ border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }}
th {{ background: #f4f6f6; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{title}</h1>
<p>{esc(cmp.get("base_model", ""))} on {esc(cmp.get("dataset", ""))}@{esc(str(cmp.get("dataset_version", ""))[:12])};
suite {esc(", ".join(report["suites"]) or "not evaluated")}; rules {esc(report["rules"]["source"] or "custom")}</p>
<h2>Recommendation</h2>
<div class="rec"><p><b>{esc(rec["candidate"] or "none")}</b> ({esc(rec["method"] or "-")}), served <b>{esc(rec["serving"] or "-")}</b></p>
<p>{esc(rec["summary"])}</p></div>
<h2>Quality vs cost</h2>
{f'<img alt="Pareto chart" src="data:image/png;base64,{chart}">' if chart else "<p>no candidate has both numbers</p>"}
<p>Pareto front: {esc(", ".join(report["pareto_front"]) or "empty")}</p>
<h2>Candidates</h2>{candidates_table}
<h2>Suite metrics</h2>{metrics_table}
<h2>Rules checked (first that fires wins, per kind)</h2>{_table(rule_rows, ["kind", "rule", "recommends", "conditions", "fired"])}
<h2>Measured numbers the rules read</h2>{measures}
<h2>Context</h2><pre>{esc(json.dumps(report["context"], indent=2))}</pre>
</body></html>
"""


def write_report(report: dict[str, Any], folder: str | Path) -> tuple[Path, Path]:
    """comparison_report.json and .html in `folder` (created); returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, html_path = folder / JSON_NAME, folder / HTML_NAME
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True), encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path
