"""Every shipped job config loads, validates (method options included) and round-trips;
the recipe runs one of them for two steps on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.training import TrainingJobConfig
from posttrain.training.__main__ import main as recipe

CONFIGS = sorted((Path(__file__).parents[3] / "configs").glob("*.yaml"))


def test_configs_ship() -> None:
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_loads(path: Path) -> None:
    config = TrainingJobConfig.from_yaml(path.read_text())
    config.method_spec_config()
    assert TrainingJobConfig.from_yaml(config.to_yaml()) == config
    model, size, method, device = path.stem.split("_")
    assert config.method == method and device in ("cpu", "gpu")


def test_recipe_runs_a_shipped_config(tiny_model, train_rows, tmp_path, capsys) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    overrides = [f"base_model={tiny_model}", "max_steps=2", "batch_size=4", "merge_adapter=false"]
    lora_cpu = next(p for p in CONFIGS if p.name == "smollm2_135m_lora_cpu.yaml")
    args = [str(lora_cpu), *overrides, "--train", str(train), "--out", str(tmp_path / "out")]
    assert recipe(args) == 0
    out = capsys.readouterr().out
    assert "step 2/2" in out and '"status": "completed"' in out
