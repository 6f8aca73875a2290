"""Fused SwiGLU: h = silu(gate) * up in one pass (forward), dgate and dup in one (backward).

Reference (transformers' LlamaMLP): down(act(gate(x)) * up(x)) with act = silu. The plain
route keeps silu(gate) as an extra tensor and makes three elementwise passes; here the
math is fp32 in registers, one rounding to the output dtype, and backward recomputes
silu from the saved gate and up (nothing else is saved).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from posttrain.training.kernels.base import (
    KernelUnit,
    register_kernel,
    triton_available,
    use_triton,
)

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _swiglu_fwd(G, U, H, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(H + offs, (g * tl.sigmoid(g) * u).to(H.dtype.element_ty), mask=mask)

    @triton.jit
    def _swiglu_bwd(DH, G, U, DG, DU, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        dh = tl.load(DH + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
        sig = tl.sigmoid(g)
        silu = g * sig
        tl.store(DU + offs, (dh * silu).to(DU.dtype.element_ty), mask=mask)
        tl.store(
            DG + offs, (dh * u * sig * (1.0 + g * (1.0 - sig))).to(DG.dtype.element_ty), mask=mask
        )


_BLOCK = 1024


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        gate, up = gate.contiguous(), up.contiguous()
        h = torch.empty(
            gate.shape, dtype=torch.promote_types(gate.dtype, up.dtype), device=gate.device
        )
        n = gate.numel()
        _swiglu_fwd[(triton.cdiv(n, _BLOCK),)](gate, up, h, n, BLOCK=_BLOCK)
        ctx.save_for_backward(gate, up)
        return h

    @staticmethod
    def backward(ctx: Any, dh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        gate, up = ctx.saved_tensors
        dh = dh.contiguous()
        dgate, dup = torch.empty_like(gate), torch.empty_like(up)
        n = gate.numel()
        _swiglu_bwd[(triton.cdiv(n, _BLOCK),)](dh, gate, up, dgate, dup, n, BLOCK=_BLOCK)
        return dgate, dup


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up: the Triton kernel on CUDA, the reference elsewhere."""
    if use_triton(gate) and gate.shape == up.shape:
        return _SwiGLU.apply(gate, up)
    return swiglu_reference(gate, up)


def _fused_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


def patch(module: torch.nn.Module) -> bool:
    if not all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return False
    if getattr(getattr(module, "config", None), "hidden_act", None) not in ("silu", "swish"):
        return False  # another activation: the module keeps its own forward
    module.forward = _fused_forward.__get__(module)  # type: ignore[method-assign]
    return True


UNIT = register_kernel(KernelUnit("swiglu", "fused silu(gate) * up", patch))
