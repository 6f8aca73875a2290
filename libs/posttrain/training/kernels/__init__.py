"""Fused training kernels for Llama-family models, and the one function that applies them.

Owns the kernels that replace pieces of a Hugging Face decoder during training: each is one
registered unit in its own file (rmsnorm, swiglu, rope, lora_linear) with a Triton path
on CUDA and a pure-PyTorch path everywhere else, and a `patch` that swaps one module's
forward for the fused one. `patch_model` applies every unit (or the named ones) to a model.

Patching changes how a module computes, never what it holds: parameters, buffers,
module names and classes stay, so state_dict keys, PEFT's adapter saving and merging
work as before. It must never change the math beyond rounding: tests/libs/training/
test_kernels.py checks every unit against the reference op, forward and backward.
"""

from __future__ import annotations

from posttrain.training.kernels import lora_linear, rmsnorm, rope, swiglu  # noqa: F401  (registers)
from posttrain.training.kernels.base import KERNELS, KernelUnit, patch_model, triton_available

__all__ = ["KERNELS", "KernelUnit", "patch_model", "triton_available"]
