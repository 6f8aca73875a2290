"""Tuning methods: one module per method, each registering one MethodSpec.

Adding a method is one file here and one line below; the shared tests
(tests/libs/training/test_methods.py) pick it up from METHODS.
"""

from posttrain.training.methods import full, ia3, lora, prefix, prompt, qlora  # noqa: F401
from posttrain.training.methods.base import (
    METHODS,
    ArtifactKind,
    MethodSpec,
    Runtime,
    get_method,
    register_method,
)

__all__ = ["METHODS", "ArtifactKind", "MethodSpec", "Runtime", "get_method", "register_method"]
