"""The kernel registry, the Triton-or-PyTorch choice, and `patch_model`."""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KernelUnit:
    name: str
    summary: str
    # Swaps one module's forward for the fused one; True if it did (the module fitted).
    patch: Callable[[torch.nn.Module], bool]


KERNELS: dict[str, KernelUnit] = {}


def register_kernel(unit: KernelUnit) -> KernelUnit:
    if unit.name in KERNELS:
        raise ValueError(f"kernel {unit.name!r} is registered twice")
    KERNELS[unit.name] = unit
    return unit


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


# Triton reads TRITON_INTERPRET when a kernel is defined (at import), so it is read once here too.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def interpreting() -> bool:
    """TRITON_INTERPRET=1 at import: Triton kernels run on CPU tensors through Triton's
    interpreter (how CI tests them)."""
    return _INTERPRET


def use_triton(tensor: torch.Tensor) -> bool:
    """Triton on CUDA tensors (or under its CPU interpreter) when triton is installed;
    otherwise the PyTorch fallback."""
    if not triton_available():
        return False
    return tensor.is_cuda or (interpreting() and tensor.device.type == "cpu")


def patch_model(model: torch.nn.Module, names: Iterable[str] | None = None) -> dict[str, int]:
    """Apply the named kernel units (default: all) to every module of `model` they fit;
    returns how many modules each unit patched. Idempotent: a patched module is skipped."""
    chosen = list(KERNELS) if names is None else list(names)
    unknown = sorted(set(chosen) - set(KERNELS))
    if unknown:
        raise ValueError(f"unknown kernel(s) {unknown}; known: {sorted(KERNELS)}")
    counts = dict.fromkeys(chosen, 0)
    for module in model.modules():
        done = getattr(module, "_posttrain_kernels", set())
        for name in chosen:
            if name not in done and KERNELS[name].patch(module):
                done = done | {name}
                module._posttrain_kernels = done  # type: ignore[assignment]
                counts[name] += 1
    return counts
