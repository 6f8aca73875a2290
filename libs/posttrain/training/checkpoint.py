"""Resumable checkpoints: what one holds, and the pluggable store that keeps them.

A checkpoint is a small folder: the trainable weights (safetensors), the optimizer and
scheduler states, every RNG state, and state.json (data position: epoch, step, the
epoch's sampler order; the history so far; fingerprints of the config and the data, so
a resume with other settings or other rows is refused). The engine writes the folder
locally, then hands it to a CheckpointStore: LocalCheckpointStore here; the trainer
service implements the same four methods over S3. Loading never unpickles arbitrary
objects (torch.load(weights_only=True)). Several processes (posttrain.training.distributed)
write a sharded folder instead (format SHARDED_CHECKPOINT_FORMAT, the same state.json);
it resumes only with the same number of processes.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "state.json"
WEIGHTS_FILE = "trainable.safetensors"
CHECKPOINT_FORMAT = "posttrain.checkpoint.v1"
SHARDED_CHECKPOINT_FORMAT = "posttrain.checkpoint.sharded.v1"


class CheckpointStore(Protocol):
    """Where checkpoints live. A saved checkpoint must become visible to latest_step()
    only once all its files are stored (a crash mid-save leaves the previous one latest)."""

    def save(self, step: int, source: Path) -> str:
        """Store the files of the local folder `source` as the checkpoint of `step`;
        return an id for logs."""
        ...

    def latest_step(self) -> int | None:
        """The highest step with a complete checkpoint, or None."""
        ...

    def load(self, step: int, dest: Path) -> Path:
        """Copy the checkpoint of `step` into the empty local folder `dest`; return it."""
        ...

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint, ascending."""
        ...


class LocalCheckpointStore:
    """Checkpoints as `root/step-00000042/` folders; a folder appears by atomic rename.
    keep_last prunes older checkpoints after each save (None keeps all)."""

    def __init__(self, root: str | Path, keep_last: int | None = None) -> None:
        self.root = Path(root)
        self.keep_last = keep_last

    def _dir(self, step: int) -> Path:
        return self.root / f"step-{step:08d}"

    def save(self, step: int, source: Path) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            final = self._dir(step)
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        if self.keep_last:
            for old in self.steps()[: -self.keep_last]:
                shutil.rmtree(self._dir(old), ignore_errors=True)
        return str(final)

    def steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            if child.name.startswith("step-") and (child / STATE_FILE).is_file():
                found.append(int(child.name.removeprefix("step-")))
        return sorted(found)

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def load(self, step: int, dest: Path) -> Path:
        source = self._dir(step)
        if not (source / STATE_FILE).is_file():
            raise FileNotFoundError(f"no complete checkpoint for step {step} under {self.root}")
        shutil.copytree(source, dest, dirs_exist_ok=True)
        return dest


@dataclass
class TrainingState:
    """Where a run is and what it has seen; everything a resume needs besides tensors."""

    global_step: int = 0  # optimizer steps completed
    epoch: int = 0
    step_in_epoch: int = 0  # steps of `epoch` completed
    epoch_order: list[int] = field(default_factory=list)  # the sampler order of `epoch`
    tokens_seen: int = 0
    elapsed_s: float = 0.0  # training wall time before this process
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per step
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    config_fingerprint: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""
    format: str = CHECKPOINT_FORMAT
    world_size: int = 1  # processes that wrote it: the global batch depends on it


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: param.detach().to("cpu").contiguous()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def load_trainable_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(tensors):
        missing = sorted(set(params) - set(tensors))[:5]
        extra = sorted(set(tensors) - set(params))[:5]
        raise ValueError(f"checkpoint does not fit this model: missing {missing}, extra {extra}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys).copy()), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def write_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainingState,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model), str(folder / WEIGHTS_FILE))
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(scheduler.state_dict(), folder / "scheduler.pt")
    torch.save(rng_state(), folder / "rng.pt")
    # state.json last: a folder without it is never taken for a checkpoint.
    (folder / STATE_FILE).write_text(json.dumps(asdict(state), sort_keys=True) + "\n")


def read_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainingState:
    """Restore weights, optimizer, scheduler and RNG from `folder`; return its state."""
    state = read_state(folder)
    if state.format != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint format {state.format!r}, expected {CHECKPOINT_FORMAT!r}")
    load_trainable_state(model, load_file(str(folder / WEIGHTS_FILE)))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(folder / "rng.pt", weights_only=True))
    return state


def read_state(folder: Path) -> TrainingState:
    """state.json of a checkpoint folder (either format), without touching its tensors."""
    state = TrainingState(**json.loads((folder / STATE_FILE).read_text()))
    if state.format not in (CHECKPOINT_FORMAT, SHARDED_CHECKPOINT_FORMAT):
        raise ValueError(f"unknown checkpoint format {state.format!r}")
    return state
