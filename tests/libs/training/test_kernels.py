"""The fused kernels against their reference ops, forward and backward.

On a CPU machine (CI) the Triton kernels run through Triton's interpreter
(TRITON_INTERPRET=1, set by this folder's conftest before anything imports them); on a
GPU they run compiled, in bf16 as in training. The pure-PyTorch fallbacks are tested too
(they are what a CPU run without triton computes). Inputs are random, never zeros.

Tolerances: fp32 on CPU, max |a - b| <= 1e-5 * (1 + max |ref|) (same math, other order of
operations); bf16 on the GPU, relative L2 error ||a - b|| / ||ref|| <= 1e-2 (one rounding
to bf16 against the reference's several).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from posttrain.training.kernels import KERNELS, base, patch_model
from posttrain.training.kernels import lora_linear as lora_linear_module
from posttrain.training.kernels.lora_linear import lora_linear
from posttrain.training.kernels.rmsnorm import rms_norm, rms_norm_reference
from posttrain.training.kernels.rope import apply_rope, rope_reference
from posttrain.training.kernels.swiglu import swiglu, swiglu_reference

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32


def close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    a, e = actual.double(), expected.double()
    if DTYPE == torch.float32:
        err = (a - e).abs().max().item()
        assert err <= 1e-5 * (1 + e.abs().max().item()), f"{what}: max abs error {err:.3e}"
    else:
        rel = ((a - e).norm() / e.norm()).item()
        assert rel <= 1e-2, f"{what}: relative L2 error {rel:.3e}"


def grads(fn, *tensors: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """fn's output and the gradients of <output, fixed random weights> w.r.t. tensors."""
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in tensors]
    out = fn(*leaves)
    out = torch.cat([o.reshape(-1) for o in out]) if isinstance(out, tuple) else out
    torch.manual_seed(123)
    probe = torch.randn(out.shape, device=out.device, dtype=torch.float32)
    (out.float() * probe).sum().backward()
    return out.detach(), [leaf.grad for leaf in leaves]


def test_triton_path_is_what_runs_here() -> None:
    # The Triton kernels themselves are under test, not only the fallbacks.
    assert base.triton_available(), "triton is a pinned dependency (its interpreter runs on CPU)"
    assert base.use_triton(torch.empty(1, device=DEVICE))


@pytest.mark.parametrize("trainable_weight", [True, False])
@pytest.mark.parametrize("weight_dtype", ["same", "float32"])
def test_rmsnorm_matches_reference(trainable_weight: bool, weight_dtype: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 37, 96, device=DEVICE, dtype=DTYPE, requires_grad=True)
    wd = DTYPE if weight_dtype == "same" else torch.float32
    w = (1 + 0.1 * torch.randn(96, device=DEVICE, dtype=wd)).requires_grad_(trainable_weight)
    out, (dx, dw) = grads(lambda a, b: rms_norm(a, b, 1e-5), x, w)
    ref, (rdx, rdw) = grads(lambda a, b: rms_norm_reference(a, b, 1e-5), x, w)
    assert out.dtype == ref.dtype
    close(out, ref, "rmsnorm forward")
    close(dx, rdx, "rmsnorm dx")
    if trainable_weight:
        close(dw, rdw, "rmsnorm dw")
    else:
        assert dw is None


def test_swiglu_matches_reference() -> None:
    torch.manual_seed(1)
    g = torch.randn(2, 33, 160, device=DEVICE, dtype=DTYPE, requires_grad=True) * 3
    u = torch.randn(2, 33, 160, device=DEVICE, dtype=DTYPE, requires_grad=True)
    out, (dg, du) = grads(swiglu, g, u)
    ref, (rdg, rdu) = grads(swiglu_reference, g, u)
    close(out, ref, "swiglu forward")
    close(dg, rdg, "swiglu dgate")
    close(du, rdu, "swiglu dup")


@pytest.mark.parametrize("cos_batch", [1, 2])
def test_rope_matches_reference_on_transposed_views(cos_batch: int) -> None:
    # q/k as LlamaAttention makes them: a projection viewed (b, s, h, d) then transposed.
    torch.manual_seed(2)
    b, s, hq, hk, d = 2, 19, 4, 2, 32
    proj_q = torch.randn(b, s, hq * d, device=DEVICE, dtype=DTYPE, requires_grad=True)
    proj_k = torch.randn(b, s, hk * d, device=DEVICE, dtype=DTYPE, requires_grad=True)
    angles = torch.rand(cos_batch, s, d // 2, device=DEVICE) * 6.0
    cos = torch.cat([angles.cos(), angles.cos()], -1).to(DTYPE)
    sin = torch.cat([angles.sin(), angles.sin()], -1).to(DTYPE)

    def run(fn):
        def f(pq, pk):
            q = (pq * 1.0).view(b, s, hq, d).transpose(1, 2)  # * 1.0: not a leaf, as in a model
            k = (pk * 1.0).view(b, s, hk, d).transpose(1, 2)
            return fn(q, k, cos, sin)

        return f

    out, (dq, dk) = grads(run(apply_rope), proj_q, proj_k)
    ref, (rdq, rdk) = grads(run(rope_reference), proj_q, proj_k)
    close(out, ref, "rope forward")
    close(dq, rdq, "rope dq")
    close(dk, rdk, "rope dk")


@pytest.mark.parametrize("bias", [False, True])
def test_lora_linear_matches_peft_math_and_skips_frozen_weight(bias: bool) -> None:
    torch.manual_seed(3)
    x = torch.randn(2, 13, 48, device=DEVICE, dtype=DTYPE, requires_grad=True)
    w = torch.randn(80, 48, device=DEVICE, dtype=DTYPE) / 7
    b = torch.randn(80, device=DEVICE, dtype=DTYPE) if bias else None
    a = (torch.randn(8, 48, device=DEVICE) / 7).requires_grad_(True)  # adapters stay fp32
    bb = torch.randn(80, 8, device=DEVICE).requires_grad_(True)

    def reference(x_, a_, b_):
        base_out = torch.nn.functional.linear(x_, w, b)
        return base_out + (x_ @ a_.to(x_.dtype).t() @ b_.to(x_.dtype).t()) * 2.0

    out, (dx, da, db) = grads(lambda x_, a_, b_: lora_linear(x_, w, b, a_, b_, 2.0), x, a, bb)
    ref, (rdx, rda, rdb) = grads(reference, x, a, bb)
    close(out, ref, "lora forward")
    close(dx, rdx, "lora dx")
    close(da, rda, "lora dA")
    close(db, rdb, "lora dB")
    assert da.dtype == torch.float32 and db.dtype == torch.float32
    with pytest.raises(ValueError, match="must be frozen"):
        lora_linear(x, w.clone().requires_grad_(True), b, a, bb, 2.0)


def _loss_and_grads(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    named = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), named


@pytest.mark.parametrize("method", ["full", "lora"])
def test_patched_model_trains_like_the_original(tiny_model: Path, method: str) -> None:
    """A whole tiny Llama (+ PEFT LoRA on every linear), fp32: same loss (rel 1e-5) and
    gradients (rel 1e-3, abs 1e-5), patched or not; state_dict keys and the saved adapter
    unchanged."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def load():
        torch.manual_seed(4)
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).to(DEVICE)
        if method == "lora":
            cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
            model = get_peft_model(model, cfg)
            for n, p in model.named_parameters():  # lora_B starts at 0: make dA non-zero
                if "lora_B" in n:
                    torch.nn.init.normal_(p, std=0.05)
        return model.train()

    plain, patched = load(), load()
    torch.manual_seed(5)
    ids = torch.randint(0, plain.config.vocab_size, (2, 24), device=DEVICE)
    keys = list(patched.state_dict())
    counts = patch_model(patched)
    layers = 2
    assert counts["rmsnorm"] == 2 * layers + 1 and counts["swiglu"] == layers
    assert counts["rope"] == layers
    assert counts["lora_linear"] == (7 * layers if method == "lora" else 0)
    assert patch_model(patched) == dict.fromkeys(KERNELS, 0)  # idempotent
    assert list(patched.state_dict()) == keys
    loss, grads_ = _loss_and_grads(plain, ids)
    ploss, pgrads = _loss_and_grads(patched, ids)
    # fp32 throughout (on the GPU too): only the order of operations differs.
    assert torch.allclose(loss, ploss, rtol=1e-5), (loss, ploss)
    assert grads_.keys() == pgrads.keys() and grads_
    for name, g in grads_.items():
        assert torch.allclose(g, pgrads[name], rtol=1e-3, atol=1e-5), name
    if method == "lora":
        from peft.utils import get_peft_model_state_dict

        assert list(get_peft_model_state_dict(patched)) == list(get_peft_model_state_dict(plain))


def test_unknown_kernel_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown kernel"):
        patch_model(torch.nn.Linear(2, 2), ["rmsnorm", "flash"])


def test_engine_option_applies_the_kernels_and_keeps_the_loss_curve(
    tiny_model: Path, train_rows: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_training (the workers' engine) with fused_kernels on vs off: the kernels were
    applied (the report says where) and the loss curve is the same (rel 1e-4 per step).
    The wiring is under test here, so on CPU the PyTorch paths run (Triton's interpreter
    takes minutes for a whole run; the kernels themselves are tested above)."""
    from posttrain.training import TrainingJobConfig, run_training

    if not CUDA:
        monkeypatch.setattr(base, "_INTERPRET", False)

    def run(kernels: str):
        config = TrainingJobConfig(
            base_model=str(tiny_model), method="lora", max_steps=3, batch_size=4,
            max_seq_len=128, method_config={"rank": 4, "dropout": 0.0}, fused_kernels=kernels,
        )  # fmt: skip
        return run_training(config, train_rows, None, tmp_path / kernels)

    on, off = run("on"), run("off")
    report = json.loads(on.report_path.read_text())
    assert report["kernels"]["lora_linear"] > 0, report["kernels"]
    assert json.loads(off.report_path.read_text())["kernels"] == {}
    for a, b in zip(on.history, off.history, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * abs(b["loss"]), (a["loss"], b["loss"])
    assert (on.artifact_dir / "adapter_model.safetensors").exists()


def test_kernel_option_is_validated() -> None:
    from posttrain.training import TrainingJobConfig

    with pytest.raises(ValueError, match="fused_kernels must be"):
        TrainingJobConfig(fused_kernels="yes")


def test_lora_linear_on_a_4bit_base_matches_peft(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QLoRA: the fused LoRA linear over a bitsandbytes NF4 base (its matmul forward, the
    dequantised weight in backward) gives PEFT's loss and adapter gradients (fp32
    compute; rel 1e-4, abs 1e-6)."""
    from posttrain.training.methods import Runtime, get_method

    spec = get_method("qlora")
    runtime = Runtime(device=torch.device(DEVICE), compute_dtype=torch.float32)

    def load():
        torch.manual_seed(6)
        model = spec.load(tiny_model, spec.parse_config({"rank": 4, "dropout": 0.0}), runtime)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.05)
        return model.train()

    plain, patched = load(), load()
    counts = patch_model(patched, ["lora_linear"])
    assert counts["lora_linear"] == 14
    ids = torch.randint(0, plain.config.vocab_size, (2, 16), device=DEVICE)
    loss, grads_ = _loss_and_grads(plain, ids)
    calls = []
    fused_apply = lora_linear_module._LoraLinear.apply
    monkeypatch.setattr(
        lora_linear_module._LoraLinear, "apply", lambda *a: calls.append(1) or fused_apply(*a)
    )
    ploss, pgrads = _loss_and_grads(patched, ids)
    assert len(calls) == 14  # the fused path ran, not PEFT's own forward
    assert torch.allclose(loss, ploss, rtol=1e-5), (loss, ploss)
    assert grads_.keys() == pgrads.keys() and grads_
    for name, g in grads_.items():
        assert torch.allclose(g, pgrads[name], rtol=1e-4, atol=1e-6), name
