"""A/B experiments in live traffic, the pure-logic core the gateway service calls.

assignment: sticky, share-weighted assignment of user keys to arms, stable when an arm
stops, and the per-experiment hash that logs carry instead of user keys.
stats: per-arm metrics with intervals, differences against control with tests and
Holm-Bonferroni correction, and the verdict (only once the sample is large enough).
guardrail: which arms to stop for their policy-incident rate.
report: the report as JSON, as the gateway's ExperimentReport proto, and as HTML + PNG.

No I/O except report.write_report, no clock, no randomness; never gRPC or Kafka.
"""

from posttrain.experiments.assignment import assign_variant, user_key_hash, validate_variants
from posttrain.experiments.guardrail import ArmStop, check_guardrail
from posttrain.experiments.report import (
    ExperimentReport,
    ReportFiles,
    build_report,
    render_html,
    render_png,
    write_report,
)
from posttrain.experiments.stats import (
    Analysis,
    AnalysisConfig,
    InferenceRecord,
    MetricDifference,
    VariantStats,
    Verdict,
    analyze,
)

__all__ = [
    "Analysis",
    "AnalysisConfig",
    "ArmStop",
    "ExperimentReport",
    "InferenceRecord",
    "MetricDifference",
    "ReportFiles",
    "VariantStats",
    "Verdict",
    "analyze",
    "assign_variant",
    "build_report",
    "check_guardrail",
    "render_html",
    "render_png",
    "user_key_hash",
    "validate_variants",
    "write_report",
]
