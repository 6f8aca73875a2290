"""The trainer service: training jobs, workers and checkpoints (TrainingService in
proto/posttrain/v1/training.proto). servicer.py is the gRPC shell and its role matrix,
lookups.py asks intake and the registry on the caller's behalf, workers.py is the
training.requested consumer group, runner.py the three ways a process runs (__main__).
The core is posttrain.trainer."""
