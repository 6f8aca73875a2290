"""posttrain: a post-training pipeline for LLMs.

The library core that the services in services/ drive. Nothing in libs/ imports a
service, and the ML cores (data, training, evaluation, serving) know nothing of gRPC
or Kafka.
"""

__version__ = "0.1.0"
