"""The chunked LM-head cross-entropy against the reference (full logits + F.cross_entropy),
forward and backward, and the engine's loss with and without it.

Tolerances (relative, by norm): with float32 or float64 inputs the two agree to 1e-5 / 1e-6
(the log-softmax is fp32 on both sides; only the order of summation differs); with the head in bfloat16 (what autocast does on GPU) to 2e-2
relative on the gradients (bf16 has 8 mantissa bits and both sides round the logits'
gradient to bf16 before the matmul, but in different orders of summation), 1e-3 on the loss.
The same tests run on CUDA when it is there.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from posttrain.data.chat_template import IGNORE_INDEX
from posttrain.training import engine
from posttrain.training.batching import collate
from posttrain.training.losses import linear_cross_entropy_sum, output_head

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _reference(hidden, weight, labels, compute_dtype):
    logits = F.linear(hidden.to(compute_dtype), weight.to(compute_dtype))
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def _inputs(dtype, device, *, batch=3, seq=17, hidden=24, vocab=301, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, seq, hidden, generator=g, dtype=torch.float64)
    w = torch.randn(vocab, hidden, generator=g, dtype=torch.float64) * 0.3
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    labels[:, : seq // 3] = IGNORE_INDEX  # a prompt
    labels[-1, -4:] = IGNORE_INDEX  # padding
    h = h.to(device=device, dtype=dtype).requires_grad_(True)
    w = w.to(device=device, dtype=dtype).requires_grad_(True)
    return h, w, labels.to(device)


def _rel(a, b):
    return float(
        (a.detach().double() - b.detach().double()).norm()
        / b.detach().double().norm().clamp_min(1e-30)
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("dtype", "compute", "loss_tol", "grad_tol"),
    [
        (torch.float64, torch.float64, 1e-6, 1e-6),  # the loss is fp32 on both sides
        (torch.float32, torch.float32, 1e-5, 1e-5),
        (torch.float32, torch.bfloat16, 1e-3, 2e-2),  # fp32 weights under bf16 autocast
    ],
)
@pytest.mark.parametrize("chunk_rows", [1, 5, 4096])
def test_matches_full_logits_cross_entropy(device, dtype, compute, loss_tol, grad_tol, chunk_rows):
    h, w, labels = _inputs(dtype, device)
    ref = _reference(h, w, labels, compute)
    ref_gh, ref_gw = torch.autograd.grad(ref * 0.5, (h, w))
    h2, w2, _ = _inputs(dtype, device)
    out = linear_cross_entropy_sum(h2, w2, labels, compute_dtype=compute, chunk_rows=chunk_rows)
    gh, gw = torch.autograd.grad(out * 0.5, (h2, w2))
    assert out.dtype == torch.float32
    assert _rel(out, ref) < loss_tol
    assert _rel(gh, ref_gh) < grad_tol and _rel(gw, ref_gw) < grad_tol
    assert gh.dtype == h2.dtype and gw.dtype == w2.dtype
    assert not gh.isnan().any() and not gw.isnan().any()
    # Positions without a label get exactly no gradient.
    assert gh[:, : 17 // 3 - 1].abs().max() == 0


def test_frozen_head_and_no_labels_and_no_grad():
    h, w, labels = _inputs(torch.float32, "cpu")
    w.requires_grad_(False)
    out = linear_cross_entropy_sum(h, w, labels)
    (gh,) = torch.autograd.grad(out, (h,))
    ref_gh = torch.autograd.grad(_reference(h, w, labels, torch.float32), (h,))[0]
    assert _rel(gh, ref_gh) < 1e-5
    empty = torch.full_like(labels, IGNORE_INDEX)
    zero = linear_cross_entropy_sum(h, w, empty)
    assert float(zero) == 0.0
    assert torch.autograd.grad(zero, (h,))[0].abs().max() == 0
    with torch.no_grad():
        assert (
            _rel(linear_cross_entropy_sum(h, w, labels), _reference(h, w, labels, torch.float32))
            < 1e-5
        )


def test_engine_loss_is_the_full_logits_loss(tiny_model, tiny_tokenizer, train_rows, monkeypatch):
    """The engine's _forward_loss through the chunked head equals the full-logits route, for
    a plain model and a LoRA-wrapped one; prompt tuning keeps the full-logits route."""
    from peft import LoraConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from posttrain.data.chat_template import encode_rows
    from posttrain.training.methods import Runtime

    rows, _ = encode_rows(train_rows[:6], tiny_tokenizer, max_seq_len=256)
    batch = collate(rows, [[0], [1], [2], [3]], int(tiny_tokenizer.pad_token_id), packed=False)
    runtime = Runtime(device=torch.device("cpu"), compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    torch.manual_seed(0)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear"))
    for model in (lora.get_base_model(), lora):
        assert output_head(model) is not None
        grads = []
        for chunked in (True, False):
            monkeypatch.setattr(engine, "CHUNKED_LOSS", chunked)
            model.zero_grad(set_to_none=True)
            loss = engine._forward_loss(model, batch, runtime)
            loss.backward()
            grads.append(
                (loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad])
            )
        (a, ga), (b, gb) = grads
        assert _rel(a, b) < 1e-5
        assert max(_rel(x, y) for x, y in zip(ga, gb, strict=True)) < 1e-4
    prompt = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
        PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
    )
    assert output_head(prompt) is None
