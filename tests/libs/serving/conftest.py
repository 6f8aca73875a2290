"""Fixtures for the serving tests: a tiny random Llama (SmolLM2's tokenizer cut to 1024
ids, hidden 64, 2 layers, weights at std 0.2; made once per session) and random adapters for it: two LoRA
(different ranks and targets, one rank-stabilised), one prefix- and one prompt-tuning.

Torch runs on 2 threads: the development machines have 2 cores shared by several people.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from posttrain.serving.synthetic import make_random_adapter, make_tiny_base

torch.set_num_threads(2)

ADAPTERS = {
    "a1": dict(kind="lora", seed=1),
    "a2": dict(
        kind="lora",
        seed=2,
        r=8,
        lora_alpha=4,
        use_rslora=True,
        target_modules=["q_proj", "k_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ),
    "a3": dict(kind="lora", seed=3, r=2, target_modules=["v_proj", "down_proj"]),
    "pre": dict(kind="prefix", seed=4, num_virtual_tokens=5, scale=3.0),
    "pro": dict(kind="prompt", seed=5, num_virtual_tokens=3, scale=3.0),
}


@pytest.fixture(scope="session")
def serving_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_base(tmp_path_factory.mktemp("serving-models") / "tiny-llama", seed=0)


@pytest.fixture(scope="session")
def adapter_sources(
    serving_base: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Adapter folders by name, outside any served adapter directory."""
    root = tmp_path_factory.mktemp("adapter-sources")
    return {
        name: make_random_adapter(serving_base, root / name, **spec)
        for name, spec in ADAPTERS.items()
    }
