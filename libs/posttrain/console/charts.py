"""Charts as inline SVG, drawn on the server: no script library, no CDN.

Each function takes plain numbers (or the registry's lineage graph) and returns SVG
markup that is safe to put in a page: every text from the services is escaped.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from html import escape

from posttrain.v1 import registry_pb2

INK, MUTED, ACCENT, GOOD, BAD = "#1f2933", "#9aa5b1", "#2962ff", "#2e7d32", "#c62828"


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def loss_curve(points: Sequence[tuple[int, float]], total_steps: int = 0) -> str:
    """Training loss by step; the x axis spans the job's total steps when known."""
    width, height, pad = 560, 220, 40
    pts = [(s, v) for s, v in points if _finite(v)]
    if not pts:
        return (
            f'<svg class="chart" role="img" aria-label="loss curve" width="{width}" '
            f'height="{height}"><text x="{pad}" y="{height / 2}" fill="{MUTED}">'
            "no loss reported yet</text></svg>"
        )
    max_step = max(total_steps, max(s for s, _ in pts), 1)
    lo, hi = min(v for _, v in pts), max(v for _, v in pts)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5

    def x(step: float) -> float:
        return pad + (width - 2 * pad) * step / max_step

    def y(value: float) -> float:
        return height - pad - (height - 2 * pad) * (value - lo) / (hi - lo)

    path = " ".join(
        f"{'M' if i == 0 else 'L'}{x(s):.1f},{y(v):.1f}" for i, (s, v) in enumerate(pts)
    )
    last_step, last = pts[-1]
    return (
        f'<svg class="chart" role="img" aria-label="loss curve" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        f'stroke="{MUTED}"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" '
        f'stroke="{MUTED}"/>'
        f'<text x="{pad - 4}" y="{y(hi) + 4:.1f}" text-anchor="end" font-size="11">{hi:.3g}</text>'
        f'<text x="{pad - 4}" y="{y(lo) + 4:.1f}" text-anchor="end" font-size="11">{lo:.3g}</text>'
        f'<text x="{pad}" y="{height - pad + 16}" font-size="11">0</text>'
        f'<text x="{width - pad}" y="{height - pad + 16}" text-anchor="end" font-size="11">'
        f"step {max_step}</text>"
        f'<path class="loss" d="{path}" fill="none" stroke="{ACCENT}" stroke-width="2"/>'
        f'<circle cx="{x(last_step):.1f}" cy="{y(last):.1f}" r="3" fill="{ACCENT}"/>'
        f'<text x="{width - pad}" y="{pad - 10}" text-anchor="end" font-size="12">'
        f"loss {last:.4f} at step {last_step}</text></svg>"
    )


# Left to right: where a model comes from, what it became, where it went.
LINEAGE_COLUMNS = (
    ("dataset_version", "base_model"),
    ("training_job",),
    ("model_version",),
    ("evaluation",),
    ("alias", "deployment"),
)


def lineage_graph(graph: registry_pb2.LineageGraph, focus: str = "") -> str:
    """The registry's lineage graph, one column per kind (dataset -> job -> version ->
    evaluation -> alias/deployment), edges as arrows; `focus` is drawn highlighted."""
    column_of = {kind: i for i, kinds in enumerate(LINEAGE_COLUMNS) for kind in kinds}
    columns: dict[int, list[registry_pb2.LineageNode]] = defaultdict(list)
    for node in graph.nodes:
        columns[column_of.get(node.kind, len(LINEAGE_COLUMNS) - 1)].append(node)
    box_w, box_h, gap_x, gap_y, pad = 170, 44, 40, 16, 12
    rows = max((len(v) for v in columns.values()), default=1)
    width = pad * 2 + len(LINEAGE_COLUMNS) * box_w + (len(LINEAGE_COLUMNS) - 1) * gap_x
    height = pad * 2 + rows * box_h + (rows - 1) * gap_y
    where: dict[str, tuple[float, float]] = {}
    boxes = []
    for col, nodes in sorted(columns.items()):
        for row, node in enumerate(sorted(nodes, key=lambda n: n.id)):
            x0 = pad + col * (box_w + gap_x)
            y0 = pad + row * (box_h + gap_y)
            where[node.id] = (x0, y0)
            stroke = ACCENT if node.id == focus else MUTED
            label = node.label or node.id
            short = label if len(label) <= 24 else label[:22] + "…"
            boxes.append(
                f'<g class="node" data-kind="{escape(node.kind)}" data-id="{escape(node.id)}">'
                f"<title>{escape(node.id)}</title>"
                f'<rect x="{x0}" y="{y0}" width="{box_w}" height="{box_h}" rx="6" '
                f'fill="white" stroke="{stroke}" stroke-width="{2 if node.id == focus else 1}"/>'
                f'<text x="{x0 + 8}" y="{y0 + 16}" font-size="10" fill="{MUTED}">'
                f"{escape(node.kind.replace('_', ' '))}</text>"
                f'<text x="{x0 + 8}" y="{y0 + 33}" font-size="12">{escape(short)}</text></g>'
            )
    arrows = []
    for edge in graph.edges:
        if edge.from_id not in where or edge.to_id not in where:
            continue
        (x1, y1), (x2, y2) = where[edge.from_id], where[edge.to_id]
        arrows.append(
            f'<line x1="{x1 + box_w}" y1="{y1 + box_h / 2}" x2="{x2}" y2="{y2 + box_h / 2}" '
            f'stroke="{INK}" marker-end="url(#arrow)"><title>{escape(edge.relation)}</title></line>'
        )
    return (
        f'<svg class="chart lineage" role="img" aria-label="lineage graph" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}"><defs><marker id="arrow" '
        'viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        f'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{INK}"/></marker></defs>'
        + "".join(arrows)
        + "".join(boxes)
        + "</svg>"
    )


def intervals(rows: Sequence[tuple[str, float, float, float]], *, unit: str = "") -> str:
    """One bar per arm: the estimate with its confidence interval as a whisker.
    Rows are (label, value, ci_low, ci_high); NaN intervals are left out."""
    width, row_h, left, pad = 560, 28, 150, 16
    finite = [v for _, *vals in rows for v in vals if _finite(v)]
    hi = max(finite + [1e-9])
    lo = min(finite + [0.0])
    height = pad * 2 + row_h * max(len(rows), 1)

    def x(value: float) -> float:
        return left + (width - left - pad) * (value - lo) / (hi - lo or 1)

    parts = []
    for i, (label, value, ci_low, ci_high) in enumerate(rows):
        y0 = pad + i * row_h
        parts.append(
            f'<text x="{left - 8}" y="{y0 + 17}" text-anchor="end" font-size="12">'
            f"{escape(label)}</text>"
        )
        if _finite(value):
            parts.append(
                f'<rect x="{x(lo)}" y="{y0 + 6}" width="{max(x(value) - x(lo), 1):.1f}" '
                f'height="14" fill="{ACCENT}" opacity="0.35"/>'
                f'<text x="{x(value) + 4:.1f}" y="{y0 + 4}" font-size="10">{value:.3g}{unit}</text>'
            )
        if _finite(ci_low) and _finite(ci_high):
            parts.append(
                f'<line class="ci" x1="{x(ci_low):.1f}" y1="{y0 + 13}" x2="{x(ci_high):.1f}" '
                f'y2="{y0 + 13}" stroke="{INK}" stroke-width="2"/>'
                f'<line x1="{x(ci_low):.1f}" y1="{y0 + 8}" x2="{x(ci_low):.1f}" y2="{y0 + 18}" '
                f'stroke="{INK}"/><line x1="{x(ci_high):.1f}" y1="{y0 + 8}" '
                f'x2="{x(ci_high):.1f}" y2="{y0 + 18}" stroke="{INK}"/>'
            )
    return (
        f'<svg class="chart" role="img" aria-label="estimates with intervals" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">' + "".join(parts) + "</svg>"
    )


def agreement_matrix(judge_scores: Sequence[int], human_scores: Sequence[int]) -> str:
    """Judge grade vs human grade (1..5) per anchor item, as a count heat map; the
    diagonal is exact agreement. Items the judge gave no grade (0) are left out."""
    pairs = Counter(
        (j, h) for j, h in zip(judge_scores, human_scores, strict=False) if 1 <= j <= 5 and h
    )
    cell, left, top = 30, 40, 24
    size = left + 5 * cell + 10
    most = max(pairs.values(), default=1)
    parts = [
        f'<text x="{left + 2.5 * cell}" y="12" text-anchor="middle" font-size="11">human</text>',
        f'<text x="10" y="{top + 2.5 * cell}" font-size="11" '
        f'transform="rotate(-90 10 {top + 2.5 * cell})" text-anchor="middle">judge</text>',
    ]
    for j in range(1, 6):
        for h in range(1, 6):
            n = pairs.get((j, h), 0)
            x0, y0 = left + (h - 1) * cell, top + (j - 1) * cell
            colour = GOOD if j == h else BAD
            opacity = 0.08 + 0.8 * n / most if n else 0.03
            parts.append(
                f'<rect x="{x0}" y="{y0}" width="{cell - 2}" height="{cell - 2}" '
                f'fill="{colour}" opacity="{opacity:.2f}"><title>judge {j}, human {h}: {n}'
                f"</title></rect>"
            )
            if n:
                parts.append(
                    f'<text x="{x0 + cell / 2 - 1}" y="{y0 + cell / 2 + 4}" '
                    f'text-anchor="middle" font-size="11">{n}</text>'
                )
    return (
        f'<svg class="chart" role="img" aria-label="judge vs human agreement" width="{size}" '
        f'height="{top + 5 * cell + 6}">' + "".join(parts) + "</svg>"
    )
