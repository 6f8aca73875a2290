"""Fused LoRA linear: y = x W^T (+ b) + s (x A^T) B^T as one autograd node.

Reference (PEFT's lora.Linear): base_layer(x) + lora_B(lora_A(dropout(x))) * scaling, which
writes the low-rank product, its scaled copy and the sum as three (tokens x out) tensors.
Here the low-rank product is added into the base output by the GEMM itself (addmm with
alpha = s, beta = 1: no extra pass), the frozen weight never gets a gradient computed, and
backward needs only x, x A^T (tokens x r) and the weights: dx = dy W + s (dy B) A,
dA = s (dy B)^T x, dB = s dy^T (x A^T). A 4-bit (bitsandbytes) base is multiplied through
bitsandbytes and dequantised in backward, as bitsandbytes' own backward does.

The matmuls are cuBLAS's (through PyTorch): no hand-written GEMM beats them at these
shapes; what is fused is the graph around them. Falls back to PEFT's own forward for what
it does not cover (several active adapters, DoRA, dropout while training, merged or
disabled adapters).
"""

from __future__ import annotations

from typing import Any

import torch

from posttrain.training.kernels.base import KernelUnit, register_kernel


def _is_4bit(weight: torch.Tensor) -> bool:
    return type(weight).__name__ == "Params4bit"


def _base_matmul(x2: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if _is_4bit(weight):
        import bitsandbytes as bnb

        return bnb.matmul_4bit(x2, weight.t(), quant_state=weight.quant_state)
    return x2 @ weight.to(x2.dtype).t()


def _dense(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if _is_4bit(weight):
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, weight.quant_state).to(dtype)
    return weight.to(dtype)


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,  # (r, in), already in the compute dtype
        lora_b: torch.Tensor,  # (out, r)
        scale: float,
    ) -> torch.Tensor:
        x2 = x  # (tokens, in): callers flatten, so the output is no view made in here
        out = _base_matmul(x2, weight)
        if bias is not None:
            out = out + bias.to(out.dtype)
        xa = x2 @ lora_a.t()
        out = out.to(x2.dtype).addmm_(xa, lora_b.t(), alpha=scale)
        ctx.save_for_backward(x2, xa, lora_a, lora_b)
        ctx.weight, ctx.scale = weight, scale  # frozen: no copy kept
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x2, xa, lora_a, lora_b = ctx.saved_tensors
        scale = ctx.scale
        dy2 = dy.to(x2.dtype)
        dyb = dy2 @ lora_b  # (n, r)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = (dy2 @ _dense(ctx.weight, dy2.dtype)).addmm_(dyb, lora_a, alpha=scale)
        da = (dyb.t() @ x2).mul_(scale) if ctx.needs_input_grad[3] else None
        db = (dy2.t() @ xa).mul_(scale) if ctx.needs_input_grad[4] else None
        dbias = dy2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, None, dbias, da, db, None


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """x W^T + b + scale * x A^T B^T through one autograd node, in autocast's dtype."""
    dtype = _compute_dtype(x)
    if weight.requires_grad:
        raise ValueError("lora_linear: the base weight must be frozen (requires_grad=False)")
    x2 = x.to(dtype).reshape(-1, x.shape[-1])
    out = _LoraLinear.apply(x2, weight, bias, lora_a.to(dtype), lora_b.to(dtype), float(scale))
    return out.view(*x.shape[:-1], out.shape[-1])


def _fusable(layer: torch.nn.Module) -> str | None:
    """The one active adapter's name when the fused path computes what PEFT would."""
    if layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    name = layer.active_adapters[0]
    if name not in layer.lora_A or layer.use_dora.get(name, False):
        return None
    dropout = layer.lora_dropout[name]
    if layer.training and isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
        return None
    if layer.base_layer.weight.requires_grad:
        return None
    return name


def _fused_forward(
    self: torch.nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any
) -> torch.Tensor:
    name = _fusable(self) if not args and not kwargs else None
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    base = self.base_layer
    out = lora_linear(
        x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
        self.scaling[name],
    )  # fmt: skip
    return out


def patch(module: torch.nn.Module) -> bool:
    if not all(hasattr(module, n) for n in ("base_layer", "lora_A", "lora_B", "scaling")):
        return False
    if not isinstance(module.base_layer, torch.nn.Linear):
        return False
    module.forward = _fused_forward.__get__(module)  # type: ignore[method-assign]
    return True


UNIT = register_kernel(
    KernelUnit("lora_linear", "base matmul + low-rank path in one autograd node", patch)
)
