"""The evaluator service: evaluation suites, reports and release-gate verdicts (EvaluationService in proto/posttrain/v1/evaluation.proto)."""
