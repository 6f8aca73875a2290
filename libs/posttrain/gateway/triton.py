"""The gateway's Triton client: posttrain.serving.client (TritonLLM and the mapping of
Triton's errors to gateway statuses), re-exported under the name the gateway uses."""

from posttrain.serving.client import (
    Completion,
    DeadlineExceeded,
    Sampling,
    TritonFailed,
    TritonLLM,
    build_inputs,
    map_triton_error,
)

__all__ = [
    "Completion",
    "DeadlineExceeded",
    "Sampling",
    "TritonFailed",
    "TritonLLM",
    "build_inputs",
    "map_triton_error",
]
