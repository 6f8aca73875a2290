"""Rotary position embedding applied to q and k in place (forward), and its transpose
rotation (backward).

Reference (transformers' apply_rotary_pos_emb): q * cos + rotate_half(q) * sin, same for k,
with cos/sin of shape (batch or 1, seq, head_dim). The plain route writes four temporaries
per tensor (the rotated half, two products, the sum); here each (row, position) is read
once and rotated in registers, in fp32, into the q/k buffer itself. Backward rotates the
incoming gradient by -theta into a new tensor (never into a gradient autograd may share).
Nothing is saved but cos and sin, which the model keeps anyway.
"""

from __future__ import annotations

import inspect
import types
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
    def _rope(
        X, Y, COS, SIN, n_heads, seq_len,
        sx_b, sx_h, sx_s, sy_b, sy_h, sy_s, sc_b, sc_s,
        HALF: tl.constexpr, BLOCK: tl.constexpr, BACKWARD: tl.constexpr,
    ):  # fmt: skip
        # One program per (batch, position): cos/sin loaded once, then every head rotated.
        pid = tl.program_id(0).to(tl.int64)
        b = pid // seq_len
        s = pid % seq_len
        d = tl.arange(0, BLOCK)
        mask = d < HALF
        c_row = b * sc_b + s * sc_s
        c1 = tl.load(COS + c_row + d, mask=mask, other=0.0).to(tl.float32)
        c2 = tl.load(COS + c_row + HALF + d, mask=mask, other=0.0).to(tl.float32)
        s1 = tl.load(SIN + c_row + d, mask=mask, other=0.0).to(tl.float32)
        s2 = tl.load(SIN + c_row + HALF + d, mask=mask, other=0.0).to(tl.float32)
        for h in range(0, n_heads):
            x_row = b * sx_b + h * sx_h + s * sx_s
            x1 = tl.load(X + x_row + d, mask=mask, other=0.0).to(tl.float32)
            x2 = tl.load(X + x_row + HALF + d, mask=mask, other=0.0).to(tl.float32)
            if BACKWARD:  # the transpose of the forward rotation
                y1 = x1 * c1 + x2 * s2
                y2 = x2 * c2 - x1 * s1
            else:
                y1 = x1 * c1 - x2 * s1
                y2 = x2 * c2 + x1 * s2
            y_row = b * sy_b + h * sy_h + s * sy_s
            tl.store(Y + y_row + d, y1.to(Y.dtype.element_ty), mask=mask)
            tl.store(Y + y_row + HALF + d, y2.to(Y.dtype.element_ty), mask=mask)


def _launch(
    x: torch.Tensor, y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool
) -> None:
    batch, heads, seq, dim = x.shape
    cos = cos.expand(batch, seq, dim)
    sin = sin.expand(batch, seq, dim)
    if x.stride(3) != 1 or y.stride(3) != 1 or cos.stride(2) != 1 or sin.stride() != cos.stride():
        raise ValueError("rope kernel: the head dimension must be contiguous (and cos/sin alike)")
    _rope[(batch * seq,)](
        x, y, cos, sin, heads, seq,
        x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1), y.stride(2),
        cos.stride(0), cos.stride(1),
        HALF=dim // 2, BLOCK=triton.next_power_of_2(dim // 2), BACKWARD=backward,
    )  # fmt: skip


class _RopeInPlace(torch.autograd.Function):
    """One tensor per node: autograd allows a Function that writes into a view (q and k are
    transposed views of their projections) only when it returns that one tensor."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        _launch(x, x, cos, sin, backward=False)
        ctx.mark_dirty(x)
        ctx.save_for_backward(cos, sin)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        dx = torch.empty_like(grad)
        _launch(grad, dx, cos, sin, backward=True)
        return dx, None, None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_reference(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k (batch, heads, seq, head_dim) rotated: in place by the Triton kernel on CUDA,
    out of place by the reference elsewhere (or for other layouts)."""
    if use_triton(q) and unsqueeze_dim == 1 and q.dim() == 4 and cos.dim() == 3:
        return _RopeInPlace.apply(q, cos, sin), _RopeInPlace.apply(k, cos, sin)
    return rope_reference(q, k, cos, sin, unsqueeze_dim)


def _rebound(fn: types.FunctionType, name: str, value: Any) -> types.FunctionType:
    """A copy of `fn` whose global `name` is `value`; through decorators too (a wrapper's
    closure cell holding the function it wraps gets the rebound copy)."""
    inner = getattr(fn, "__wrapped__", None)
    closure = fn.__closure__
    if closure and isinstance(inner, types.FunctionType):
        closure = tuple(
            types.CellType(_rebound(inner, name, value)) if c.cell_contents is inner else c
            for c in closure
        )
    namespace = fn.__globals__
    if name in fn.__code__.co_names:
        namespace = {**namespace, name: value}
    copy = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, closure)
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__dict__.update(fn.__dict__)
    return copy


def patch(module: torch.nn.Module) -> bool:
    """An attention module whose forward calls its module's global apply_rotary_pos_emb gets
    a forward of its own that calls apply_rope instead (the class, and other models in the
    process, keep theirs: the global itself is not touched)."""
    forward = type(module).forward
    if not type(module).__name__.endswith("Attention") or not isinstance(
        forward, types.FunctionType
    ):
        return False
    if "apply_rotary_pos_emb" not in inspect.unwrap(forward).__code__.co_names:
        return False
    fused = _rebound(forward, "apply_rotary_pos_emb", apply_rope)
    module.forward = fused.__get__(module)  # type: ignore[method-assign]
    return True


UNIT = register_kernel(KernelUnit("rope", "rotary embedding applied to q and k in place", patch))
