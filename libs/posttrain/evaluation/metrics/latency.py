"""latency: p50 and p95 of per-case generation latency, and decoding speed in tokens/s.

A case's latency is how long its request waited for its output (for a batched local
generator, the wall time of its batch). tokens_per_s is the median over cases of
completion tokens / latency: the speed one request sees, not the server's throughput.
Percentiles interpolate linearly between order statistics (numpy's default). Measured,
so not reproduced bit for bit by a re-run, unlike the quality metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from posttrain.evaluation.metrics.base import Metric, MetricSkipped, RunContext


@dataclass(frozen=True)
class LatencyConfig:
    pass


def compute(cases: Sequence, ctx: RunContext, config: LatencyConfig) -> dict[str, float]:
    latencies = np.array([c.latency_s for c in cases], dtype=np.float64)
    if latencies.size == 0:
        raise MetricSkipped("no cases")
    speeds = [c.completion_tokens / c.latency_s for c in cases if c.latency_s > 0]
    out = {
        "latency_p50_s": float(np.percentile(latencies, 50)),
        "latency_p95_s": float(np.percentile(latencies, 95)),
    }
    if speeds:
        out["tokens_per_s"] = float(np.median(speeds))
    return out


METRIC = Metric(
    name="latency",
    kind="run",
    config=LatencyConfig,
    help="p50/p95 generation latency in seconds and per-request decoding speed",
    outputs={"latency_p50_s": False, "latency_p95_s": False, "tokens_per_s": True},
    compute=compute,
)
