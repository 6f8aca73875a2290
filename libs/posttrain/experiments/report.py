"""The experiment report in its three forms: a JSON-safe dict, the gateway's
ExperimentReport proto, and an HTML page with the chart embedded (plus the chart as a PNG
of its own). `write_report` puts report.json, report.html and report.png side by side.

Undefined numbers (a rate with no data, cost per successful task without a success) are
null in JSON (the file is strict JSON: no NaN, no Infinity) and NaN / +inf in the proto,
as gateway.proto documents. Charts are drawn on matplotlib's Agg canvas directly, without
pyplot, so no global backend state is touched and rendering is safe in a server thread.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from posttrain.experiments.assignment import validate_variants
from posttrain.experiments.stats import (
    PRIMARY_METRIC,
    Analysis,
    AnalysisConfig,
    InferenceRecord,
    MeanEstimate,
    Proportion,
    VariantStats,
    analyze,
)
from posttrain.v1 import gateway_pb2

_NAN = float("nan")


@dataclass(frozen=True)
class ExperimentReport:
    experiment_id: str
    variants: list[tuple[str, float]]  # (name, share), as the experiment was created
    analysis: Analysis
    max_policy_incident_rate: float | None = None  # the guardrail's threshold, if any
    judges: tuple[str, ...] = ()  # "<id>@<version>" of each judge behind the judge scores

    def to_dict(self) -> dict[str, Any]:
        a = self.analysis
        shares = dict(self.variants)
        comparisons: dict[str, list[dict[str, Any]]] = {}
        for d in a.comparisons:
            row = asdict(d)
            del row["variant"], row["control"]
            comparisons.setdefault(d.variant, []).append(row)
        arms = []
        for name, s in a.variants.items():
            arm = asdict(s)
            arm["share"] = shares[name]
            arm["stopped"] = name in a.stopped
            arm["feedback_count"] = s.feedback_count
            arm["vs_control"] = comparisons.get(name, [])
            arms.append(arm)
        return _json_safe(
            {
                "experiment_id": self.experiment_id,
                "control": a.control,
                "primary_metric": PRIMARY_METRIC,
                "alpha": a.config.alpha,
                "min_sample": a.config.min_sample,
                "max_policy_incident_rate": self.max_policy_incident_rate,
                "judges": list(self.judges),
                "stopped": list(a.stopped),
                "verdict": asdict(a.verdict),
                "variants": arms,
            }
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def to_proto(
        self,
        experiment: gateway_pb2.Experiment | None = None,
        *,
        html_uri: str = "",
        png_uri: str = "",
    ) -> gateway_pb2.ExperimentReport:
        """The gateway's ExperimentReport; `experiment` defaults to one built from the report
        (id, variants, stopped arms, threshold) for callers that do not hold the stored one."""
        a = self.analysis
        if experiment is None:
            experiment = gateway_pb2.Experiment(
                id=self.experiment_id,
                variants=[gateway_pb2.Variant(name=n, share=s) for n, s in self.variants],
                stopped_arms=list(a.stopped),
                max_policy_incident_rate=self.max_policy_incident_rate or 0.0,
            )
        return gateway_pb2.ExperimentReport(
            experiment=experiment,
            variants=[_variant_proto(s, n in a.stopped, a) for n, s in a.variants.items()],
            verdict=a.verdict.text,
            p_value=_or_nan(a.verdict.p_value),
            html_uri=html_uri,
            png_uri=png_uri,
            control=a.control,
            sample_sufficient=a.verdict.sample_sufficient,
            min_sample=a.config.min_sample,
            alpha=a.config.alpha,
            winner=a.verdict.winner or "",
            primary_metric=PRIMARY_METRIC,
            judges=self.judges,
        )


@dataclass(frozen=True)
class ReportFiles:
    json: Path
    html: Path
    png: Path


def build_report(
    experiment_id: str,
    variants: Sequence[tuple[str, float]],
    records: Iterable[InferenceRecord],
    *,
    config: AnalysisConfig | None = None,
    stopped: Collection[str] = (),
    max_policy_incident_rate: float | None = None,
    judges: Sequence[str] = (),
) -> ExperimentReport:
    """`judges`: "<id>@<version>" of the judges whose scores the records carry."""
    checked = validate_variants(variants)
    analysis = analyze(records, [n for n, _ in checked], config, stopped=stopped)
    return ExperimentReport(
        experiment_id, checked, analysis, max_policy_incident_rate, tuple(judges)
    )


def write_report(report: ExperimentReport, directory: Path, stem: str = "report") -> ReportFiles:
    """Writes <stem>.json, <stem>.png and <stem>.html (chart embedded) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(
        directory / f"{stem}.json", directory / f"{stem}.html", directory / f"{stem}.png"
    )
    png = render_png(report)
    files.png.write_bytes(png)
    files.html.write_text(render_html(report, png), encoding="utf-8")
    files.json.write_text(report.to_json(), encoding="utf-8")
    return files


def render_png(report: ExperimentReport) -> bytes:
    """Three panels, one bar per arm: success rate and policy-incident rate with their
    Wilson intervals (the guardrail threshold as a line), latency p50 and p95."""
    a = report.analysis
    names = list(a.variants)
    stats = list(a.variants.values())
    xs = list(range(len(names)))
    colors = [
        "#9e9e9e" if n in a.stopped else "#1f77b4" if n == a.control else "#ff7f0e" for n in names
    ]
    figure = Figure(figsize=(12, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    success_axes, incident_axes, latency_axes = figure.subplots(1, 3)

    _rate_panel(success_axes, xs, [s.success for s in stats], colors, "success rate")
    _rate_panel(
        incident_axes, xs, [s.policy_incident for s in stats], colors, "policy-incident rate"
    )
    if report.max_policy_incident_rate is not None:
        incident_axes.axhline(
            100 * report.max_policy_incident_rate,
            color="#d62728",
            linestyle="--",
            label="guardrail",
        )
        incident_axes.legend(loc="upper right")

    width = 0.4
    p50 = [_or_nan(s.latency_p50_ms) for s in stats]
    p95 = [_or_nan(s.latency_p95_ms) for s in stats]
    latency_axes.bar([x - width / 2 for x in xs], p50, width, label="p50", color="#2ca02c")
    latency_axes.bar([x + width / 2 for x in xs], p95, width, label="p95", color="#98df8a")
    latency_axes.set_title("latency (ms)")
    latency_axes.legend(loc="upper right")

    for axes in (success_axes, incident_axes, latency_axes):
        axes.set_xticks(xs, [_arm_label(n, a) for n in names])
        axes.margins(y=0.3)  # headroom for the legend above the bars
    figure.suptitle(f"experiment {report.experiment_id}: {a.verdict.text}", fontsize=9, wrap=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _rate_panel(
    axes: Any, xs: list[int], rates: list[Proportion], colors: list[str], title: str
) -> None:
    values, below, above = [], [], []
    for r in rates:
        value = _NAN if r.rate is None else 100 * r.rate
        values.append(value)
        # Wilson bounds can sit a rounding error on the wrong side of 0% or 100%.
        below.append(0.0 if r.rate is None else max(0.0, value - 100 * r.ci_low))
        above.append(0.0 if r.rate is None else max(0.0, 100 * r.ci_high - value))
    axes.bar(xs, values, color=colors, yerr=[below, above], capsize=6, ecolor="#333333")
    axes.set_title(f"{title} (%) with CI")


def _arm_label(name: str, analysis: Analysis) -> str:
    if name == analysis.control:
        return f"{name}\n(control)"
    return f"{name}\n(stopped)" if name in analysis.stopped else name


def render_html(report: ExperimentReport, png: bytes | None = None) -> str:
    """A self-contained page: verdict, the chart (embedded), per-arm table, comparisons."""
    a = report.analysis
    png = render_png(report) if png is None else png
    level = f"{1 - a.config.alpha:.0%}"
    shares = dict(report.variants)
    e = html.escape
    arm_rows = []
    for name, s in a.variants.items():
        role = "control" if name == a.control else "stopped" if name in a.stopped else ""
        arm_rows.append(
            "<tr>"
            + "".join(
                f"<td>{e(cell)}</td>"
                for cell in (
                    name,
                    role,
                    f"{shares[name]:.0%}",
                    str(s.requests),
                    str(s.feedback_count),
                    _rate_cell(s.success),
                    _rate_cell(s.policy_incident),
                    _rate_cell(s.intervention),
                    _number(s.latency_p50_ms, "{:.0f}"),
                    _number(s.latency_p95_ms, "{:.0f}"),
                    _number(s.cost_per_successful_task, "{:.4f}"),
                    _mean_cell(s.judge_score),
                    _mean_cell(s.rating),
                )
            )
            + "</tr>"
        )
    diff_rows = []
    for d in a.comparisons:
        scale, unit = (100, " pts") if d.metric.endswith("_rate") else (1, "")
        cells = (
            d.variant,
            d.metric,
            "–" if d.difference is None else f"{scale * d.difference:+.2f}{unit}",
            "–" if d.ci_low is None else f"[{scale * d.ci_low:+.2f}, {scale * d.ci_high:+.2f}]",
            _number(d.p_value, "{:.3g}"),
            _number(d.p_value_adjusted, "{:.3g}"),
            d.test,
        )
        diff_rows.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    image = base64.b64encode(png).decode("ascii")
    title = e(f"Experiment {report.experiment_id}")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.verdict {{ font-size: 1.1em; padding: 0.5em; background: #f4f4f4; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p class="verdict"><strong>Verdict:</strong> {e(a.verdict.text)}</p>
<p>Control: {e(a.control)}. Primary metric: success rate. Significance level {a.config.alpha:g}
({level} intervals); a verdict needs {a.config.min_sample} records with feedback per arm.
Judge score (1..5): {e(", ".join(report.judges) or "no judge graded these requests")}.</p>
<img id="chart" alt="success rate, policy-incident rate and latency per arm"
 src="data:image/png;base64,{image}">
<h2>Arms</h2>
<table>
<tr><th>arm</th><th>role</th><th>share</th><th>requests</th><th>with feedback</th>
<th>success rate [{level} CI]</th><th>policy incidents [CI]</th><th>interventions [CI]</th>
<th>latency p50 ms</th><th>latency p95 ms</th><th>cost per successful task</th>
<th>judge score [CI]</th><th>rating [CI]</th></tr>
{chr(10).join(arm_rows)}
</table>
<h2>Against control</h2>
<table>
<tr><th>arm</th><th>metric</th><th>difference</th><th>{level} CI</th><th>p</th>
<th>Holm-adjusted p</th><th>test</th></tr>
{chr(10).join(diff_rows)}
</table>
</body>
</html>
"""


def _variant_proto(s: VariantStats, stopped: bool, analysis: Analysis) -> gateway_pb2.VariantStats:
    message = gateway_pb2.VariantStats(
        variant=s.variant,
        requests=s.requests,
        success_rate=_or_nan(s.success.rate),
        success_ci_low=s.success.ci_low,
        success_ci_high=s.success.ci_high,
        policy_incident_rate=_or_nan(s.policy_incident.rate),
        intervention_rate=_or_nan(s.intervention.rate),
        latency_p50_ms=_or_nan(s.latency_p50_ms),
        latency_p95_ms=_or_nan(s.latency_p95_ms),
        cost_per_successful_task=_or_nan(s.cost_per_successful_task),
        feedback_count=s.feedback_count,
        successes=s.success.count,
        policy_incident_ci_low=s.policy_incident.ci_low,
        policy_incident_ci_high=s.policy_incident.ci_high,
        intervention_ci_low=s.intervention.ci_low,
        intervention_ci_high=s.intervention.ci_high,
        latency_mean_ms=_or_nan(s.latency_ms.mean),
        total_cost=s.total_cost,
        stopped=stopped,
        vs_control=[
            gateway_pb2.MetricDifference(
                metric=d.metric,
                control=d.control,
                difference=_or_nan(d.difference),
                ci_low=_or_nan(d.ci_low),
                ci_high=_or_nan(d.ci_high),
                p_value=_or_nan(d.p_value),
                p_value_adjusted=_or_nan(d.p_value_adjusted),
                test=d.test,
            )
            for d in analysis.comparisons
            if d.variant == s.variant
        ],
    )
    for field_name, estimate in (("rating", s.rating), ("judge_score", s.judge_score)):
        if estimate.n:
            getattr(message, field_name).CopyFrom(_mean_proto(estimate))
    return message


def _mean_proto(m: MeanEstimate) -> gateway_pb2.MeanEstimate:
    return gateway_pb2.MeanEstimate(
        n=m.n, mean=_or_nan(m.mean), ci_low=_or_nan(m.ci_low), ci_high=_or_nan(m.ci_high)
    )


def _or_nan(x: float | None) -> float:
    return _NAN if x is None else x


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _number(x: float | None, pattern: str) -> str:
    if x is None:
        return "–"
    return "∞" if math.isinf(x) else pattern.format(x)


def _rate_cell(p: Proportion) -> str:
    if p.rate is None:
        return "–"
    return f"{p.rate:.1%} [{p.ci_low:.1%}, {p.ci_high:.1%}] ({p.count}/{p.n})"


def _mean_cell(m: MeanEstimate) -> str:
    if m.mean is None:
        return "–"
    if m.ci_low is None:
        return f"{m.mean:.3g} (n={m.n})"
    return f"{m.mean:.3g} [{m.ci_low:.3g}, {m.ci_high:.3g}] (n={m.n})"
