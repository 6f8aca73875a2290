"""The trainer service: training jobs, workers and checkpoints (TrainingService in proto/posttrain/v1/training.proto)."""
