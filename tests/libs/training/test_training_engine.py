"""The loop: reproducibility, exact resume, cancel, accumulation, eval, packing, gradient
checkpointing, progress events, the schedule, the config round trip and the report."""

from __future__ import annotations

import json

import pytest
import torch

from posttrain.training import (
    Lineage,
    LocalCheckpointStore,
    ProgressEvent,
    TrainingJobConfig,
    run_training,
)
from posttrain.training.batching import epoch_order, plan_epoch
from posttrain.training.engine import _forward_loss, lr_factor
from posttrain.training.methods import Runtime


def _config(tiny_model, **overrides) -> TrainingJobConfig:
    values = dict(
        base_model=str(tiny_model),
        method="lora",
        method_config={"rank": 4, "alpha": 8, "dropout": 0.1},
        max_steps=6,
        batch_size=4,
        lr=5e-3,
        warmup_steps=2,
        seed=7,
    )
    values.update(overrides)
    return TrainingJobConfig(**values)


def _losses(result) -> list[float]:
    return [h["loss"] for h in result.history]


def test_same_seed_same_loss_curve(tiny_model, train_rows, tmp_path) -> None:
    first = run_training(_config(tiny_model), train_rows, None, tmp_path / "a")
    second = run_training(_config(tiny_model), train_rows, None, tmp_path / "b")
    other = run_training(_config(tiny_model, seed=8), train_rows, None, tmp_path / "c")
    assert _losses(first) == _losses(second)  # bit-identical on CPU fp32
    assert _losses(first) != _losses(other)
    assert len(_losses(first)) == 6


def test_resume_equals_straight_run(tiny_model, train_rows, eval_rows, tmp_path) -> None:
    """6 steps straight vs 3 steps, cancel, resume 3: same losses (1e-6), same data order.
    Dropout is on (0.1), so the RNG state must be restored too; 32 rows / 8 per step is 4
    steps an epoch, so the resumed part also crosses into a new epoch's shuffle."""
    config = _config(tiny_model, batch_size=8, eval_every=3)
    straight = run_training(config, train_rows, eval_rows, tmp_path / "straight")
    assert straight.steps == straight.total_steps == 6

    store = LocalCheckpointStore(tmp_path / "ckpts")
    calls = []

    def cancel_after_three() -> bool:
        calls.append(1)
        return len(calls) > 3

    first = run_training(
        config, train_rows, eval_rows, tmp_path / "part", store, should_cancel=cancel_after_three
    )
    assert first.status == "cancelled" and first.steps == 3 and first.artifact_dir is None
    assert store.steps() == [3]
    resumed = run_training(config, train_rows, eval_rows, tmp_path / "part", store)
    assert resumed.status == "completed" and resumed.resumed_from_step == 3
    assert [h["step"] for h in resumed.history] == list(range(1, 7))
    for a, b in zip(_losses(straight), _losses(resumed), strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    assert [h["epoch"] for h in resumed.history] == [0, 0, 0, 0, 1, 1]
    for a, b in zip(straight.eval_history, resumed.eval_history, strict=True):
        assert a["step"] == b["step"] and a["eval_loss"] == pytest.approx(b["eval_loss"], abs=1e-6)
    assert store.latest_step() == 6
    state = json.loads((tmp_path / "ckpts" / "step-00000006" / "state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)
    assert state["epoch_order"] == epoch_order(len(train_rows), 7, state["epoch"])


def test_resume_refuses_another_config_or_other_rows(tiny_model, train_rows, tmp_path) -> None:
    store = LocalCheckpointStore(tmp_path / "ckpts")
    run_training(_config(tiny_model, max_steps=2), train_rows, None, tmp_path / "a", store)
    with pytest.raises(ValueError, match="another config: \\['lr'\\]"):
        run_training(
            _config(tiny_model, max_steps=2, lr=1e-3), train_rows, None, tmp_path / "a", store
        )
    with pytest.raises(ValueError, match="other training rows"):
        run_training(_config(tiny_model, max_steps=2), train_rows[:-1], None, tmp_path / "a", store)
    # Operational fields may change (eval/checkpoint cadence); an ended run just finishes.
    again = run_training(
        _config(tiny_model, max_steps=2, checkpoint_every=1),
        train_rows,
        None,
        tmp_path / "a",
        store,
    )
    assert again.status == "completed" and again.resumed_from_step == 2


def test_cancel_stops_at_a_step_boundary_with_a_checkpoint(
    tiny_model, train_rows, tmp_path
) -> None:
    events: list[ProgressEvent] = []
    result = run_training(
        _config(tiny_model),
        train_rows,
        None,
        tmp_path / "run",
        progress=events.append,
        should_cancel=lambda: len(events) >= 2,
    )
    assert result.status == "cancelled" and result.steps == 2 and not result.artifacts
    assert LocalCheckpointStore(tmp_path / "run" / "checkpoints").steps() == [2]
    assert json.loads(result.report_path.read_text())["status"] == "cancelled"


def test_gradient_accumulation_matches_a_bigger_batch(tiny_model, train_rows, tmp_path) -> None:
    """batch 4 x accum 1 == batch 2 x accum 2: the loss is averaged over every label token
    of the optimizer step, so only float rounding differs. Tolerance 1e-5 (dropout 0)."""
    common = dict(method_config={"rank": 4, "dropout": 0.0}, max_steps=4)
    big = run_training(
        _config(tiny_model, batch_size=4, grad_accum=1, **common), train_rows, None, tmp_path / "a"
    )
    accum = run_training(
        _config(tiny_model, batch_size=2, grad_accum=2, **common), train_rows, None, tmp_path / "b"
    )
    for a, b in zip(_losses(big), _losses(accum), strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_eval_loss_progress_and_report(tiny_model, train_rows, eval_rows, tmp_path) -> None:
    events: list[ProgressEvent] = []
    config = _config(tiny_model, eval_every=2, eval_at_start=True, checkpoint_every=4)
    lineage = Lineage(dataset_version="ds-123", base_model_hash="base-456")
    result = run_training(
        config, train_rows, eval_rows, tmp_path / "run", progress=events.append, lineage=lineage
    )
    assert [e["step"] for e in result.eval_history] == [0, 2, 4, 6]
    first_eval, last_eval = (
        result.eval_history[0]["eval_loss"],
        result.eval_history[-1]["eval_loss"],
    )
    assert last_eval < first_eval, "eval loss should fall on a learnable task"
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6]
    assert all(e.total_steps == 6 and e.tokens_per_second > 0 for e in events)
    assert events[-1].eta_seconds == 0 and events[0].eta_seconds > 0
    assert (
        events[0].eval_loss == first_eval
        and events[1].eval_loss == result.eval_history[1]["eval_loss"]
    )
    assert events[0].learning_rate == pytest.approx(5e-3 / 3)  # warmup step 1 of 2
    assert LocalCheckpointStore(tmp_path / "run" / "checkpoints").steps() == [4, 6]

    report = json.loads(result.report_path.read_text())
    assert report["lineage"]["dataset_version"] == "ds-123"
    assert report["lineage"]["base_model_hash"] == "base-456"
    assert report["lineage"]["seed"] == 7 and report["lineage"]["code_version"]
    assert report["metrics"]["final_eval_loss"] == last_eval
    assert report["data"]["train"]["kept"] == len(train_rows)
    assert report["params"]["trainable"] == result.trainable_params
    png = result.report_path.parent / "loss_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    reloaded = TrainingJobConfig.from_yaml((result.report_path.parent / "config.yaml").read_text())
    assert reloaded == config
    assert result.tokens == sum(h["tokens"] for h in result.history) and result.wall_time_s > 0
    assert result.peak_memory_bytes > 0


def test_packing_trains_on_fewer_longer_sequences(tiny_model, train_rows, tmp_path) -> None:
    packed = _config(tiny_model, packing=True, max_seq_len=256, max_steps=None, batch_size=2)
    plain = _config(tiny_model, max_steps=None, batch_size=2)
    a = run_training(packed, train_rows, None, tmp_path / "packed")
    b = run_training(plain, train_rows, None, tmp_path / "plain")
    assert a.total_steps < b.total_steps  # the same rows in fewer sequences
    assert a.tokens == b.tokens  # every row seen once, no padding counted


def test_packed_rows_do_not_attend_to_each_other(tiny_model, tiny_tokenizer, train_rows) -> None:
    """A packed sequence gives each row the same logits as the row alone."""
    from transformers import AutoModelForCausalLM

    from posttrain.data.chat_template import encode_rows
    from posttrain.training.batching import collate

    rows, _ = encode_rows(train_rows[:2], tiny_tokenizer, max_seq_len=512)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    pad = tiny_tokenizer.pad_token_id
    with torch.no_grad():
        packed = model(
            **collate(rows, [[0, 1]], pad, packed=True) | {"labels": None, "use_cache": False}
        ).logits
        alone = model(**collate(rows, [[1]], pad, packed=False) | {"labels": None}).logits
    torch.testing.assert_close(packed[0, len(rows[0]) :], alone[0], atol=1e-5, rtol=0)
    # The engine's own forward (use_cache=False is what makes transformers see the packing).
    cpu = Runtime(device=torch.device("cpu"), compute_dtype=torch.float32)
    with torch.no_grad():
        together = _forward_loss(model, collate(rows, [[0, 1]], pad, packed=True), cpu)
        apart = sum(
            _forward_loss(model, collate(rows, [[i]], pad, packed=False), cpu) for i in (0, 1)
        )
    assert together.item() == pytest.approx(apart.item(), abs=1e-4)


def test_gradient_checkpointing_changes_memory_not_math(tiny_model, train_rows, tmp_path) -> None:
    common = dict(method_config={"rank": 4, "dropout": 0.0}, max_steps=3)
    plain = run_training(_config(tiny_model, **common), train_rows, None, tmp_path / "a")
    checkpointed = run_training(
        _config(tiny_model, gradient_checkpointing=True, **common), train_rows, None, tmp_path / "b"
    )
    for a, b in zip(_losses(plain), _losses(checkpointed), strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_config_round_trips_and_rejects_nonsense(tiny_model) -> None:
    config = _config(
        tiny_model, method="qlora", method_config={"rank": 8, "target_modules": ["q_proj"]}
    )
    assert TrainingJobConfig.from_yaml(config.to_yaml()) == config
    changed = config.with_overrides(["lr=1e-4", "method_config.rank=16", "packing=true"])
    assert (changed.lr, changed.method_config["rank"], changed.packing) == (1e-4, 16, True)
    assert changed.method_spec_config().rank == 16
    assert all(TrainingJobConfig.help().values())
    with pytest.raises(ValueError, match="unknown training config key"):
        TrainingJobConfig.from_dict({"base_model": "x", "learning_rate": 1})
    with pytest.raises(ValueError, match="unknown qlora option"):
        _config(tiny_model, method="qlora", method_config={"rnak": 8})
    with pytest.raises(ValueError, match="warmup"):
        _config(tiny_model, warmup_ratio=0.1)
    with pytest.raises(ValueError, match="truncate_right"):
        _config(tiny_model, truncation="truncate_right")


def test_schedule_and_sampler_are_pure_functions() -> None:
    assert [round(lr_factor(s, 10, 2, 0.0), 4) for s in (0, 1, 2)] == [0.3333, 0.6667, 1.0]
    assert lr_factor(9, 10, 2, 0.1) > 0.1 and lr_factor(9, 10, 2, 0.0) > 0
    assert epoch_order(10, 1, 0) == epoch_order(10, 1, 0) != epoch_order(10, 1, 1)
    steps = plan_epoch(
        list(range(10)), [5] * 10, batch_size=2, grad_accum=2, packing=False, max_seq_len=64
    )
    assert [len(s) for s in steps] == [2, 2, 1] and steps[-1] == [[[8], [9]]]
    packed = plan_epoch(
        list(range(10)), [30] * 10, batch_size=2, grad_accum=1, packing=True, max_seq_len=64
    )
    assert packed[0] == [[[0, 1], [2, 3]]] and len(packed) == 3


def test_local_checkpoint_store_keeps_the_last_complete_ones(tmp_path) -> None:
    store = LocalCheckpointStore(tmp_path / "ckpts", keep_last=2)
    for step in (1, 2, 3):
        source = tmp_path / f"src{step}"
        source.mkdir()
        (source / "state.json").write_text(json.dumps({"step": step}))
        store.save(step, source)
    (tmp_path / "ckpts" / "step-00000009").mkdir()  # an interrupted copy: no state.json
    assert store.steps() == [2, 3] and store.latest_step() == 3
    loaded = store.load(3, tmp_path / "back")
    assert json.loads((loaded / "state.json").read_text()) == {"step": 3}
    with pytest.raises(FileNotFoundError):
        store.load(9, tmp_path / "nothing")
