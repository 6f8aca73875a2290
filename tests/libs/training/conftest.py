"""Fixtures for the SFT engine tests: a tiny random Llama (SmolLM2's tokenizer cut to 1024
ids, hidden 64, 2 layers) made once per session, synthetic chat rows, and, for the slow
tests only, the real SmolLM2-135M-Instruct exported once to the model cache.

Torch runs on 2 threads: the development machines have 2 cores shared by several people.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels (posttrain.training.kernels) run through Triton's CPU interpreter here;
    # it is read when they are defined, so before anything imports them.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from posttrain.training import export_smollm2_instruct, load_tokenizer, make_tiny_model

torch.set_num_threads(2)

WORDS = (
    "red green blue amber river stone cloud maple cedar falcon otter harbor lantern "
    "meadow copper silver violet ember frost canyon"
).split()


def reversal_rows(count: int, seed: int) -> list[dict]:
    """Chat rows: reverse three words. Some have a system prompt, some two turns."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        words = rng.sample(WORDS, 3)
        messages = []
        if i % 3 == 0:
            messages.append({"role": "system", "content": "Answer with the words only."})
        messages += [
            {"role": "user", "content": "Reverse: " + " ".join(words)},
            {"role": "assistant", "content": " ".join(reversed(words))},
        ]
        if i % 4 == 1:
            more = rng.sample(WORDS, 2)
            messages += [
                {"role": "user", "content": "And: " + " ".join(more)},
                {"role": "assistant", "content": " ".join(reversed(more))},
            ]
        rows.append({"messages": messages})
    return rows


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model: Path):
    return load_tokenizer(tiny_model)


@pytest.fixture(scope="session")
def train_rows() -> list[dict]:
    return reversal_rows(32, seed=1)


@pytest.fixture(scope="session")
def eval_rows() -> list[dict]:
    return reversal_rows(8, seed=2)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder, exported once into the model cache
    (POSTTRAIN_MODEL_CACHE, default ~/.cache/posttrain/models) and reused afterwards."""
    return export_smollm2_instruct()
