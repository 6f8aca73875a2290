"""The evaluator service: evaluation suites, reports, the review queue and release-gate
verdicts (EvaluationService in proto/posttrain/v1/evaluation.proto; consumes
model.registered, produces evaluation.completed)."""
