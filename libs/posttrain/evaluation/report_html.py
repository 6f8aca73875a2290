"""The readable report: one self-contained HTML file (plots embedded as base64 PNG) that
sits next to the JSON report.

Sections: the gate verdict with its reasons; provenance; metric bars candidate vs
production; per-tag deltas vs production (per-tag values when there is no production);
judge calibration (confusion matrix judge vs human); the metric tables; every gate check;
the failed cases. Plots use matplotlib's object API (no pyplot state, Agg canvas), so it
runs headless and in threads.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from posttrain.evaluation.gate import OVERALL
from posttrain.evaluation.metrics import METRICS, PASS_RATE, value_direction
from posttrain.evaluation.results import EvaluationResult

_BAD, _GOOD, _NEUTRAL = "#c0392b", "#1e8449", "#7f8c8d"


def _png(figure) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _quality_names(result: EvaluationResult) -> list[str]:
    """The 0..1 quality numbers (case metrics, pass_rate); judge_score is shown /5."""
    overall = result.overall
    names = [n for n in METRICS if METRICS[n].kind == "case" and n in overall]
    return [PASS_RATE, *names] if PASS_RATE in overall else names


def _scaled(name: str, value: float) -> float:
    return value / 5 if name == "judge_score" else value


def metric_bars_png(result: EvaluationResult) -> str:
    from matplotlib.figure import Figure

    names = _quality_names(result)
    production = (result.production_metrics or {}).get(OVERALL, {})
    figure = Figure(figsize=(max(6, 0.9 * len(names) + 2), 3.6))
    axes = figure.add_subplot()
    width = 0.4 if production else 0.6
    xs = range(len(names))
    axes.bar(
        [x - (width / 2 if production else 0) for x in xs],
        [_scaled(n, result.overall[n]) for n in names],
        width,
        label="candidate",
        color="#2e86c1",
    )
    if production:
        axes.bar(
            [x + width / 2 for x in xs],
            [_scaled(n, production.get(n, 0.0)) for n in names],
            width,
            label="production",
            color="#aab7b8",
        )
    axes.set_xticks(
        list(xs), [f"{n} (/5)" if n == "judge_score" else n for n in names], rotation=30, ha="right"
    )
    axes.set_ylim(0, 1.05)
    axes.set_title("quality metrics, whole suite")
    axes.legend(loc="lower right")
    axes.grid(axis="y", alpha=0.3)
    return _png(figure)


def tag_deltas_png(result: EvaluationResult) -> str | None:
    """Heatmap tags x metrics: candidate - production (green = better), or the values;
    None when there is nothing to draw (an untagged suite, or no metric measured)."""
    from matplotlib.figure import Figure

    tags = sorted(s for s in result.metrics if s != OVERALL)
    names = _quality_names(result)
    if not tags or not names:
        return None
    compare = bool(result.deltas)
    source = result.deltas if compare else result.metrics
    grid = [[source.get(t, {}).get(n) for n in names] for t in tags]
    figure = Figure(figsize=(max(6, 1.0 * len(names) + 2), 0.5 * len(tags) + 1.8))
    axes = figure.add_subplot()
    import numpy as np

    values = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
    if compare:
        signed = values * np.array([1 if value_direction(n) is not False else -1 for n in names])
        limit = max(0.05, float(np.nanmax(np.abs(signed))) if np.isfinite(signed).any() else 0.05)
        image = axes.imshow(signed, cmap="RdYlGn", vmin=-limit, vmax=limit, aspect="auto")
        axes.set_title("per-tag delta vs production (green: candidate better)")
    else:
        image = axes.imshow(values, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        axes.set_title("per-tag values (no production report to compare)")
    for i in range(len(tags)):
        for j in range(len(names)):
            if grid[i][j] is not None:
                text = f"{grid[i][j]:+.2f}" if compare else f"{grid[i][j]:.2f}"
                axes.text(j, i, text, ha="center", va="center", fontsize=8)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_yticks(range(len(tags)), tags)
    figure.colorbar(image, ax=axes, fraction=0.03)
    return _png(figure)


def calibration_png(result: EvaluationResult) -> str | None:
    from matplotlib.figure import Figure

    from posttrain.evaluation.calibration import confusion_matrix

    c = result.calibration
    if c is None or not c.human_scores:
        return None
    counts, categories = confusion_matrix(c.judge_scores, c.human_scores)
    figure = Figure(figsize=(4.2, 3.8))
    axes = figure.add_subplot()
    axes.imshow(counts, cmap="Purples")
    for i in range(len(categories)):
        for j in range(len(categories)):
            axes.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=9)
    labels = ["none" if k == 0 else str(k) for k in categories]
    axes.set_xticks(range(len(categories)), labels)
    axes.set_yticks(range(len(categories)), labels)
    axes.set_xlabel("human score")
    axes.set_ylabel("judge score")
    axes.set_title(f"judge vs human (n={c.n})")
    return _png(figure)


def _fmt(value) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(result: EvaluationResult) -> str:
    p = result.provenance
    verdict = result.verdict or "NO VERDICT"
    colour = _GOOD if verdict == "PASS" else _BAD if verdict == "FAIL" else _NEUTRAL
    reasons = "".join(
        f"<li>{html.escape(r)}</li>" for r in (result.gate.reasons if result.gate else [])
    )
    provenance = _table(
        [[html.escape(k), _fmt(v)] for k, v in p.to_json().items() if k != "prices"]
        + [["prices", html.escape(json.dumps(p.prices))]],
        ["field", "value"],
    )
    production = result.production_metrics or {}
    metric_rows = []
    for scope in sorted(result.metrics, key=lambda s: (s != OVERALL, s)):
        for name, value in sorted(result.metrics[scope].items()):
            prod = production.get(scope, {}).get(name)
            delta = result.deltas.get(scope, {}).get(name)
            direction = value_direction(name)
            better = (
                delta is not None
                and direction is not None
                and delta != 0
                and (delta > 0) == direction
            )
            style = "" if delta in (None, 0) else f' style="color:{_GOOD if better else _BAD}"'
            metric_rows.append(
                [
                    html.escape(scope),
                    html.escape(name),
                    _fmt(value),
                    _fmt(prod),
                    f"<span{style}>{_fmt(delta)}</span>",
                    str(result.case_counts.get(scope, "")),
                ]
            )
    checks = _table(
        [
            [
                html.escape(c.rule),
                html.escape(c.subject),
                _fmt(c.measured),
                _fmt(c.threshold),
                "pass" if c.passed else "<b>FAIL</b>",
                "yes" if c.counted else "no",
            ]
            for c in (result.gate.checks if result.gate else [])
        ],
        ["rule", "subject", "measured", "threshold", "result", "counted"],
    )
    failed = [c for c in result.cases if not c.passed][:50]
    failed_rows = [
        [
            html.escape(c.case_id),
            html.escape(", ".join(c.tags)),
            html.escape(
                ", ".join(
                    f"{n}: {s.detail or s.value}" for n, s in c.scores.items() if not s.passed
                )
            ),
            f"<pre>{html.escape(c.output[:400])}</pre>",
        ]
        for c in failed
    ]
    calibration = ""
    if result.calibration:
        cal = result.calibration
        stats = ", ".join(
            f"{k} {_fmt(getattr(cal, k))}"
            for k in (
                "exact_agreement",
                "within_one",
                "kappa",
                "weighted_kappa",
                "pearson",
                "spearman",
            )
        )
        image = calibration_png(result)
        trust = "trusted" if result.judge_trusted else "UNTRUSTED"
        calibration = (
            f"<h2>Judge calibration</h2><p>{html.escape(cal.judge_id)} &mdash; <b>{trust}</b>; n={cal.n}; {stats}</p>"
            + "".join(f"<p>{html.escape(r)}</p>" for r in cal.reasons)
            + (f'<img alt="calibration" src="data:image/png;base64,{image}">' if image else "")
        )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    serving = ""
    if result.serving:
        rows = [
            [
                html.escape(s.mode),
                html.escape(s.triton_model),
                str(s.requests),
                f"{s.latency_p50_s * 1000:.0f} ms",
                f"{s.latency_p95_s * 1000:.0f} ms",
                f"{s.completion_tokens_per_s:.1f}",
            ]
            for s in result.serving
        ]
        headers = ["served as", "Triton model", "requests", "p50", "p95", "tokens/s"]
        serving = "<h2>Served through Triton (one request at a time)</h2>" + _table(rows, headers)
    tag_png = tag_deltas_png(result)
    title = f"Evaluation {html.escape(result.report_id)}: {html.escape(p.model_version_id or '?')} on {html.escape(p.suite)}"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; color: #222; }}
.verdict {{ display: inline-block; padding: .3em .8em; color: white; background: {colour}; font-weight: bold; border-radius: 4px; }}
table {{ border-collapse: collapse; margin: .5em 0 1.5em; font-size: 90%; }}
td, th {{ border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }}
th {{ background: #f4f6f6; }}
pre {{ white-space: pre-wrap; margin: 0; max-width: 500px; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{title}</h1>
<p>Release gate: <span class="verdict">{html.escape(verdict)}</span> {html.escape(result.gate.policy if result.gate else "")}</p>
<ul>{reasons}</ul>
<h2>Metrics vs production</h2>
<img alt="metric bars" src="data:image/png;base64,{metric_bars_png(result)}">
<h2>Per-tag deltas</h2>
{f'<img alt="per-tag deltas" src="data:image/png;base64,{tag_png}">' if tag_png else "<p>no per-tag numbers</p>"}
{calibration}
<h2>Gate checks</h2>{checks}
{serving}
<h2>All metrics</h2>{_table(metric_rows, ["scope", "metric", "candidate", "production", "delta", "cases"])}
<h2>Notes</h2><ul>{notes or "<li>none</li>"}</ul>
<h2>Provenance</h2>{provenance}
<h2>Failed cases ({len([c for c in result.cases if not c.passed])} of {len(result.cases)}; first 50)</h2>
{_table(failed_rows, ["case", "tags", "failed metrics", "output"])}
</body></html>
"""


def write_report(result: EvaluationResult, folder: str | Path) -> tuple[Path, Path]:
    """report.json and report.html in `folder` (created); returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, html_path = folder / "report.json", folder / "report.html"
    json_path.write_text(result.to_json(), encoding="utf-8")
    html_path.write_text(render_html(result), encoding="utf-8")
    return json_path, html_path
