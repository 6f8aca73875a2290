"""Evaluation core: suites, metrics, judges and their calibration, human review, regression
against production, release gates, and reports.

Pure library: the evaluator service (services/evaluator) drives it over gRPC and Kafka;
nothing here speaks either, or reads the artifact store itself (suites and reports pass
in and out as bytes/objects). Where things are: suite (file format, loading, version),
metrics/ (one registered unit per metric), generation (the Generator interface, local
transformers generator, replay), judge (LLM-as-judge, backends, position-swapped
pairwise), calibration (agreement/kappa/correlation, anchor sets), review (review queue,
labels -> anchors), gate (policy -> PASS/FAIL with reasons), runner (run_suite),
results (report JSON/proto/event), report_html (the readable report).
"""

from posttrain.evaluation.calibration import (
    AnchorItem,
    Calibration,
    CalibrationPolicy,
    anchor_set_version,
    calibrate,
    calibrate_judge,
    cohen_kappa,
    dump_anchors,
    load_anchors,
    pearson,
    spearman,
)
from posttrain.evaluation.gate import (
    GATE_RULES,
    GateCheck,
    GatePolicy,
    GateResult,
    evaluate_gate,
    load_gate_policy,
)
from posttrain.evaluation.generation import (
    Generation,
    Generator,
    LocalHFGenerator,
    ReplayGenerator,
    TritonGenerator,
)
from posttrain.evaluation.judge import (
    GeneratorBackend,
    GradeRequest,
    Judge,
    JudgeConfig,
    LLMJudge,
    OpenAIChatBackend,
    RuleJudge,
    build_judge,
    pairwise,
)
from posttrain.evaluation.metrics import METRICS, CaseScore, Metric
from posttrain.evaluation.metrics.cost import Prices
from posttrain.evaluation.results import (
    CaseResult,
    EvaluationResult,
    Provenance,
    ServingLatency,
)
from posttrain.evaluation.review import (
    ReviewItem,
    anchors_from_reviews,
    apply_label,
    grow_anchor_set,
    sample_for_review,
)
from posttrain.evaluation.runner import run_suite
from posttrain.evaluation.suite import (
    DEFAULT_SUITE_DIR,
    Case,
    Suite,
    SuiteError,
    load_suite,
    parse_suite,
)

__all__ = [
    "DEFAULT_SUITE_DIR",
    "GATE_RULES",
    "METRICS",
    "AnchorItem",
    "Calibration",
    "CalibrationPolicy",
    "Case",
    "CaseResult",
    "CaseScore",
    "EvaluationResult",
    "ServingLatency",
    "GateCheck",
    "GatePolicy",
    "GateResult",
    "Generation",
    "Generator",
    "GeneratorBackend",
    "GradeRequest",
    "Judge",
    "JudgeConfig",
    "LLMJudge",
    "LocalHFGenerator",
    "TritonGenerator",
    "Metric",
    "OpenAIChatBackend",
    "Prices",
    "Provenance",
    "ReplayGenerator",
    "ReviewItem",
    "RuleJudge",
    "Suite",
    "SuiteError",
    "anchor_set_version",
    "anchors_from_reviews",
    "apply_label",
    "build_judge",
    "calibrate",
    "calibrate_judge",
    "cohen_kappa",
    "dump_anchors",
    "evaluate_gate",
    "grow_anchor_set",
    "load_anchors",
    "load_gate_policy",
    "load_suite",
    "pairwise",
    "parse_suite",
    "pearson",
    "run_suite",
    "sample_for_review",
    "spearman",
]
