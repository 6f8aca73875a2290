"""Next-token cross-entropy straight from the last hidden states, without full logits.

Owns the LM-head + cross-entropy step of training. The plain route materialises a
(tokens x vocabulary) logits tensor, its fp32 copy and their gradients: at a 128k
vocabulary and 16k tokens that is about 4 GiB per copy. Here the rows whose label is not
IGNORE_INDEX are gathered first (prompt and padding positions contribute nothing to the
loss, so their logits are never computed), then the head runs over chunks of those rows,
and the gradients are computed chunk by chunk during the forward, so at most one chunk
of logits exists at any time. The math is the reference's: logits in the compute dtype
(what autocast gives the head), upcast to fp32 for log-softmax; gradients through the
same compute-dtype matmuls. Pure PyTorch: the same code runs on CPU and GPU.

It must never change the value of the loss beyond rounding; tests/libs/training check it
against F.cross_entropy over full logits, forward and backward.
"""

from __future__ import annotations

from typing import Any

import torch

from posttrain.data.chat_template import IGNORE_INDEX

# Rows per chunk: about 256 Mi logits (1 GiB in fp32) per chunk whatever the vocabulary.
_LOGITS_PER_CHUNK = 2**28


def default_chunk_rows(vocab_size: int) -> int:
    return max(64, min(16384, _LOGITS_PER_CHUNK // max(vocab_size, 1)))


class _LinearCrossEntropySum(torch.autograd.Function):
    """sum over rows of CE(hidden @ weight.T, targets); every target is a real class."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,  # (n, h)
        weight: torch.Tensor,  # (v, h)
        targets: torch.Tensor,  # (n,)
        compute_dtype: torch.dtype,
        chunk_rows: int,
        grad_hidden_needed: bool,
        grad_weight_needed: bool,
    ) -> torch.Tensor:
        w = weight.to(compute_dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if grad_hidden_needed else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if grad_weight_needed
            else None
        )
        for start in range(0, hidden.shape[0], chunk_rows):
            x = hidden[start : start + chunk_rows].to(compute_dtype)
            t = targets[start : start + chunk_rows]
            logits = (x @ w.T).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if grad_hidden is None and grad_weight is None:
                continue
            # d(sum CE)/d logits = softmax - onehot, computed in place over the fp32 logits.
            grad = logits.sub_(lse[:, None]).exp_()
            grad[torch.arange(t.shape[0], device=t.device), t] -= 1.0
            grad = grad.to(compute_dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + chunk_rows] = (grad @ w).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += (grad.T @ x).float()
        ctx.save_for_backward(
            *(g if g is not None else torch.empty(0) for g in (grad_hidden, grad_weight))
        )
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.has = (grad_hidden is not None, grad_weight is not None)
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        out_hidden = (grad_hidden * grad_total).to(hidden_dtype) if ctx.has[0] else None
        out_weight = (grad_weight * grad_total).to(weight_dtype) if ctx.has[1] else None
        return out_hidden, out_weight, None, None, None, None, None


def linear_cross_entropy_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    compute_dtype: torch.dtype | None = None,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Summed next-token cross-entropy (fp32) of the LM head `weight` (vocab x hidden, no
    bias) over `hidden` (batch x seq x hidden), with `labels` (batch x seq) NOT shifted:
    position i predicts labels[i + 1], as in engine.token_loss_sum. Equal, up to rounding,
    to F.cross_entropy(F.linear(hidden, weight).float(), shifted labels, reduction="sum",
    ignore_index=IGNORE_INDEX) with the linear run in `compute_dtype` (default: hidden's)."""
    compute_dtype = compute_dtype or hidden.dtype
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    targets = targets.reshape(-1).to(hidden.device)
    rows = hidden.reshape(-1, hidden.shape[-1])
    keep = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    rows, targets = rows.index_select(0, keep), targets.index_select(0, keep)
    grad_enabled = torch.is_grad_enabled()
    return _LinearCrossEntropySum.apply(
        rows,
        weight,
        targets,
        compute_dtype,
        chunk_rows or default_chunk_rows(weight.shape[0]),
        grad_enabled and rows.requires_grad,
        grad_enabled and weight.requires_grad,
    )


def output_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """(decoder, lm_head) of a causal LM whose logits are exactly lm_head(decoder(...)),
    seen through a PEFT wrapper that only swaps modules (LoRA, QLoRA, IA3); None when the
    logits are anything else (prompt learning, soft-capped or scaled logits, a biased,
    quantised, adapted or FSDP-sharded head): those keep the full-logits route."""
    config = getattr(model, "active_peft_config", None)
    if config is not None:
        if getattr(config, "is_prompt_learning", False):
            return None
        model = model.get_base_model()  # type: ignore[operator]
    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None
    head = get_head()
    model_config = getattr(model, "config", None)
    if (
        type(head) is not torch.nn.Linear
        or head.bias is not None
        or _is_sharded(head.weight)
        or getattr(model_config, "final_logit_softcapping", None)
        or getattr(model_config, "logit_scale", None) not in (None, 1.0)
        or getattr(model_config, "logits_scaling", None) not in (None, 1.0)
    ):
        return None
    return get_decoder(), head


def _is_sharded(weight: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return False
    return isinstance(weight, DTensor)
