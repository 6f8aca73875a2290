"""Fused RMSNorm (forward and backward): one pass over each row instead of five ops.

Reference (transformers' LlamaRMSNorm): y = w * (x_fp32 * rsqrt(mean(x_fp32^2) + eps)).to(x.dtype),
output dtype = promote(w, x). The statistics are always fp32, whatever the weight's dtype,
so a bf16 norm weight loses nothing here (QLoRA needs no fp32 upcast for its norms).
Saved for backward: x and one fp32 rstd per row. A frozen weight gets no gradient pass.
"""

from __future__ import annotations

from typing import Any

import torch

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
    def _rmsnorm_fwd(X, W, Y, RSTD, n_cols, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(X + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
        # round the normalised row to the input dtype, as the reference does before * w
        normed = (x * rstd).to(X.dtype.element_ty).to(tl.float32)
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + row * n_cols + cols, (normed * w).to(Y.dtype.element_ty), mask=mask)
        tl.store(RSTD + row, rstd)

    @triton.jit
    def _rmsnorm_bwd(
        DY, X, W, RSTD, DX, DW_PART, n_rows, n_cols, rows_per_program,
        BLOCK: tl.constexpr, WEIGHT_GRAD: tl.constexpr,
    ):  # fmt: skip
        # Each program walks a contiguous band of rows and sums its share of dw in fp32.
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK], dtype=tl.float32)
        first = pid * rows_per_program
        for i in range(0, rows_per_program):
            row = (first + i).to(tl.int64)
            if row < n_rows:
                x = tl.load(X + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(DY + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
                rstd = tl.load(RSTD + row)
                normed = x * rstd
                dn = dy * w
                dx = rstd * (dn - normed * (tl.sum(dn * normed, axis=0) / n_cols))
                tl.store(DX + row * n_cols + cols, dx.to(DX.dtype.element_ty), mask=mask)
                if WEIGHT_GRAD:
                    dw += dy * normed
        if WEIGHT_GRAD:
            tl.store(DW_PART + pid * n_cols + cols, dw, mask=mask)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm.forward, as a function (the CPU path and the test oracle)."""
    normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def _programs(n_rows: int, device: torch.device) -> int:
    if device.type == "cuda":
        return min(n_rows, 4 * torch.cuda.get_device_properties(device).multi_processor_count)
    return min(n_rows, 8)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        x2 = x  # (rows, cols), contiguous: callers flatten (no view is returned from here)
        n_rows, n_cols = x2.shape
        y = torch.empty(x2.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
        rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(n_cols)
        _rmsnorm_fwd[(n_rows,)](
            x2, weight, y, rstd, n_cols, eps, BLOCK=block, num_warps=8 if block >= 4096 else 4
        )
        ctx.save_for_backward(x2, weight, rstd)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x2, weight, rstd = ctx.saved_tensors
        n_rows, n_cols = x2.shape
        dy2 = dy.contiguous()
        dx = torch.empty_like(x2)
        weight_grad = ctx.needs_input_grad[1]
        programs = _programs(n_rows, x2.device)
        dw_part = torch.empty(
            (programs if weight_grad else 1, n_cols), dtype=torch.float32, device=x2.device
        )
        block = triton.next_power_of_2(n_cols)
        _rmsnorm_bwd[(programs,)](
            dy2, x2, weight, rstd, dx, dw_part, n_rows, n_cols, triton.cdiv(n_rows, programs),
            BLOCK=block, WEIGHT_GRAD=weight_grad, num_warps=8 if block >= 4096 else 4,
        )  # fmt: skip
        dw = dw_part.sum(0).to(weight.dtype) if weight_grad else None
        return dx, dw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of the last dimension: the Triton kernel on CUDA, the reference elsewhere."""
    if use_triton(x):
        y = _RMSNorm.apply(x.reshape(-1, x.shape[-1]).contiguous(), weight, eps)
        return y.view(x.shape)
    return rms_norm_reference(x, weight, eps)


def _fused_forward(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def patch(module: torch.nn.Module) -> bool:
    if type(module).__name__ not in ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm"):
        return False
    module.forward = _fused_forward.__get__(module)  # type: ignore[method-assign]
    return True


UNIT = register_kernel(KernelUnit("rmsnorm", "fused RMSNorm, fp32 statistics", patch))
