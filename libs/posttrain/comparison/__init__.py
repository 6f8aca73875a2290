"""Choosing the method: the measurements of a comparison run (one dataset, one base
model, several candidates), the decision framework as data (rules.yaml), recommend(),
and the report (JSON + HTML with a Pareto chart). Pure logic: no gRPC, Kafka or
database here; services/trainer's ComparisonService collects the measurements.
"""

from posttrain.comparison.decide import Recommendation, recommend
from posttrain.comparison.measurements import (
    CANCELLED,
    FAILED,
    MEASURED,
    OUT_OF_BUDGET,
    CandidateMeasurement,
    DecisionContext,
)
from posttrain.comparison.report import (
    HTML_NAME,
    JSON_NAME,
    build_report,
    pareto_front,
    render_html,
    write_report,
)
from posttrain.comparison.rules import (
    DEFAULT_RULES_PATH,
    MEASURES,
    RuleError,
    RuleSet,
    RuleViolation,
    default_rules,
    load_rules,
)

__all__ = [
    "CANCELLED",
    "DEFAULT_RULES_PATH",
    "FAILED",
    "HTML_NAME",
    "JSON_NAME",
    "MEASURED",
    "MEASURES",
    "OUT_OF_BUDGET",
    "CandidateMeasurement",
    "DecisionContext",
    "Recommendation",
    "RuleError",
    "RuleSet",
    "RuleViolation",
    "build_report",
    "default_rules",
    "load_rules",
    "pareto_front",
    "recommend",
    "render_html",
    "write_report",
]
