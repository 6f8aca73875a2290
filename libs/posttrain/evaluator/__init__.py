"""The evaluator service's core: stored suites, evaluating registered model versions
(posttrain.evaluation does the ML), reports with their review sample and
evaluation.completed, the review queue and the anchor sets it grows.

Library core of services/evaluator: it takes a SQLAlchemy session, an `emit` function
and a `Registry` (the registry's RPCs, bound to a caller) and knows nothing of gRPC or
Kafka. Where things are: suites (upload, validation, versions, cutting per tag), models
(which folder, download cache, loading), evaluator (the evaluation itself), reports
(recording, reading), review (labels, anchor sets), tables (the schema).
"""

from posttrain.evaluator.evaluator import (
    EvaluationRequest,
    Evaluator,
    EvaluatorConfig,
    Outcome,
)
from posttrain.evaluator.models import (
    LoadedModel,
    ModelFolders,
    ModelLoader,
    ModelUnderTest,
    ModelUnloadable,
    Registry,
)
from posttrain.evaluator.reports import (
    TRIGGER_BASELINE,
    TRIGGER_EVENT,
    TRIGGER_RPC,
    PublishedReport,
    outbox_emitter,
    report_proto,
)
from posttrain.evaluator.suites import (
    StoredSuite,
    SuiteCatalog,
    limit_cases_per_tag,
    suite_from_files,
)
from posttrain.evaluator.tables import EVALUATOR_MIGRATIONS

__all__ = [
    "EVALUATOR_MIGRATIONS",
    "TRIGGER_BASELINE",
    "TRIGGER_EVENT",
    "TRIGGER_RPC",
    "EvaluationRequest",
    "Evaluator",
    "EvaluatorConfig",
    "LoadedModel",
    "ModelFolders",
    "ModelLoader",
    "ModelUnderTest",
    "ModelUnloadable",
    "Outcome",
    "PublishedReport",
    "Registry",
    "StoredSuite",
    "SuiteCatalog",
    "limit_cases_per_tag",
    "outbox_emitter",
    "report_proto",
    "suite_from_files",
]
