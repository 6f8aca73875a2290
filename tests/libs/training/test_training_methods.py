"""Every registered tuning method, through one shared suite (PEFT's habit): it trains a few
steps on the tiny model, its artifact loads with vanilla peft/transformers and
reproduces the trained model's eval loss, and it merges (or says clearly why it cannot).

QLoRA's merge gets its own test: merged logits against the 4-bit adapter model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from posttrain.data.chat_template import encode_chat, encode_rows
from posttrain.training import METHODS, TrainingJobConfig, evaluate_loss, get_method, run_training
from posttrain.training.methods import Runtime

CPU = Runtime(device=torch.device("cpu"), compute_dtype=torch.float32)


def _vanilla_load(method: str, base: Path, artifact: Path):
    """The artifact loaded the way a user without posttrain would load it."""
    if get_method(method).artifact_kind == "full":
        return AutoModelForCausalLM.from_pretrained(artifact).eval()
    quantization = None
    if method == "qlora":
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
    kwargs = {"quantization_config": quantization, "device_map": "cpu"} if quantization else {}
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    return PeftModel.from_pretrained(model, artifact).eval()


def _ids(tokenizer, rows) -> torch.Tensor:
    return torch.tensor([encode_chat(r["messages"], tokenizer).input_ids[:32] for r in rows])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_trains_saves_loads_and_merges(
    method, tiny_model, tiny_tokenizer, train_rows, eval_rows, tmp_path
) -> None:
    spec = get_method(method)
    config = TrainingJobConfig(
        base_model=str(tiny_model),
        method=method,
        max_steps=3,
        batch_size=4,
        lr=1e-2,
        merge_adapter=True,
    )
    result = run_training(config, train_rows, eval_rows, tmp_path / "run")
    assert result.status == "completed" and result.steps == 3
    assert all(h["loss"] > 0 for h in result.history)
    assert 0 < result.trainable_params <= result.total_params
    if spec.artifact_kind == "full":
        assert result.trainable_params == result.total_params
        assert {"config.json", "model.safetensors"} <= {
            p.name for p in result.artifacts["full"].iterdir()
        }
    else:
        assert result.trainable_params < result.total_params / 4
        adapter = result.artifacts["adapter"]
        assert {"adapter_config.json", "adapter_model.safetensors"} <= {
            p.name for p in adapter.iterdir()
        }
        assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"]

    # The artifact, loaded by vanilla peft/transformers, is the trained model: same eval loss.
    artifact = result.artifacts[spec.artifact_kind]
    loaded = _vanilla_load(method, tiny_model, artifact)
    evals, _ = encode_rows(eval_rows, tiny_tokenizer, max_seq_len=config.max_seq_len)
    loss = evaluate_loss(
        loaded, evals, batch_size=4, pad_id=tiny_tokenizer.pad_token_id, runtime=CPU
    )
    assert loss == pytest.approx(result.metrics["final_eval_loss"], abs=1e-5)

    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    ids = _ids(tiny_tokenizer, eval_rows[:2])
    with torch.no_grad():
        base_logits = base(ids).logits
        tuned_logits = loaded(input_ids=ids).logits[:, -ids.shape[1] :]
    assert (tuned_logits - base_logits).abs().max() > 1e-3, "training changed nothing"

    if spec.merge is None:
        assert "merged" not in result.artifacts
        assert spec.cannot_merge, "a method that cannot merge must say why"
        assert result.artifact_kind == spec.artifact_kind
        return
    merged_dir = result.artifacts["merged"]
    assert result.artifact_kind == "merged" and result.artifact_dir == merged_dir
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert not (merged_dir / "adapter_config.json").exists()
    # Reference: the adapter on the ORIGINAL fp32 base (for qlora too), merge must be exact.
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), artifact
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            merged(ids).logits, reference(input_ids=ids).logits, atol=1e-5, rtol=0
        )


def test_qlora_merge_matches_the_4bit_adapter_model(
    tiny_model, tiny_tokenizer, train_rows, tmp_path
) -> None:
    """The merged model (adapter folded into the original fp32 base) against the model
    that was trained (adapter on the NF4 base). They differ by the base's quantisation
    error only. Tolerance: max |logit diff| <= 0.1 (logits here have std ~0.16, the
    adapter moved them by ~1.0), and the mean diff is under 10% of the adapter's mean
    effect. Measured: max 0.052, mean 0.007 vs adapter effect mean 0.144."""
    config = TrainingJobConfig(
        base_model=str(tiny_model),
        method="qlora",
        method_config={"rank": 8, "dropout": 0.0},
        max_steps=4,
        batch_size=4,
        lr=1e-2,
        merge_adapter=True,
    )
    result = run_training(config, train_rows, None, tmp_path / "run")
    nf4 = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    quantized_base = AutoModelForCausalLM.from_pretrained(
        tiny_model, quantization_config=nf4, device_map="cpu"
    ).eval()
    with torch.no_grad():
        ids = _ids(tiny_tokenizer, train_rows[:4])
        base_logits = quantized_base(ids).logits
        trained = PeftModel.from_pretrained(quantized_base, result.artifacts["adapter"]).eval()
        adapter_logits = trained(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(result.artifacts["merged"]).eval()
        merged_logits = merged(ids).logits
    assert merged.dtype == torch.float32  # 16-bit on GPU; fp32 on CPU
    effect = (adapter_logits - base_logits).abs()
    diff = (merged_logits - adapter_logits).abs()
    assert effect.mean() > 0.05, "the adapter must have learned something for this to mean anything"
    assert diff.max() <= 0.1
    assert diff.mean() <= 0.1 * effect.mean()


def test_method_configs_are_typed_and_documented() -> None:
    for name, spec in METHODS.items():
        assert spec.name == name and spec.summary
        assert dataclasses.is_dataclass(spec.config_class)
        help_texts = spec.config_help()
        assert help_texts and all(help_texts.values()), f"{name}: every field needs help text"
        spec.parse_config({})  # the defaults are valid
        with pytest.raises(ValueError, match="unknown"):
            spec.parse_config({"no_such_option": 1})
    assert get_method("lora").parse_config({"rank": 4, "target_modules": ["q_proj"]}).rank == 4
    with pytest.raises(ValueError, match="rank"):
        get_method("lora").parse_config({"rank": 0})
    with pytest.raises(ValueError, match="unknown tuning method"):
        get_method("dora-but-misspelled")


def test_prefix_tuning_refuses_what_it_cannot_do(tiny_model) -> None:
    with pytest.raises(ValueError, match="gradient checkpointing"):
        TrainingJobConfig(base_model=str(tiny_model), method="prefix", gradient_checkpointing=True)
    for method in ("prefix", "prompt"):
        with pytest.raises(ValueError, match="packing"):
            TrainingJobConfig(base_model=str(tiny_model), method=method, packing=True)
