"""The training report: what was trained from what, how it went, and the loss curve.

Writes `training_report.json` (config, lineage, metrics, data counts, history),
`config.yaml` (the exact job config, reloadable) and `loss_curve.png` (matplotlib, Agg
backend: no display needed). Lineage is passed in by the caller (dataset version, base
model hash); only the code version is found here when not given (git describe).
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPORT_FORMAT = "posttrain.training_report.v1"
_MODEL_FILE_SUFFIXES = (".safetensors", ".json", ".jinja", ".model", ".bin")


@dataclass
class Lineage:
    """Where a model came from. None fields are recorded as unknown."""

    dataset_version: str | None = None
    base_model_hash: str | None = None
    code_version: str | None = None  # None: `git describe` of the running code, if any
    extra: dict[str, str] = field(default_factory=dict)

    def resolved(self) -> Lineage:
        return Lineage(
            dataset_version=self.dataset_version,
            base_model_hash=self.base_model_hash,
            code_version=self.code_version or code_version(),
            extra=dict(self.extra),
        )


def code_version() -> str:
    """`git describe --always --dirty --tags` of the checkout this code runs from, else
    the installed posttrain version."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"posttrain=={version('posttrain')}"
        except PackageNotFoundError:
            return "unknown"


def hash_model_dir(path: str | Path) -> str:
    """sha256 over (relative name, file sha256) of a model folder's model files, sorted;
    the same weights and tokenizer give the same hash wherever the folder lives."""
    root = Path(path)
    outer = hashlib.sha256(b"posttrain.model_dir.v1\n")
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        if file.suffix not in _MODEL_FILE_SUFFIXES or file.name.startswith("."):
            continue
        inner = hashlib.sha256()
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                inner.update(chunk)
        outer.update(f"{file.relative_to(root).as_posix()}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


def plot_loss_curve(
    history: list[dict[str, Any]], eval_history: list[dict[str, Any]], dest: Path
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    if history:
        axis.plot([h["step"] for h in history], [h["loss"] for h in history], label="train loss")
    if eval_history:
        axis.plot(
            [h["step"] for h in eval_history],
            [h["eval_loss"] for h in eval_history],
            marker="o",
            label="eval loss",
        )
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("token cross-entropy")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(dest)
    plt.close(figure)
    return dest


def write_training_report(
    dest: Path,
    *,
    config_yaml: str,
    config: dict[str, Any],
    lineage: Lineage,
    summary: dict[str, Any],
    history: list[dict[str, Any]],
    eval_history: list[dict[str, Any]],
) -> Path:
    """Write the report folder; returns the JSON file's path."""
    import peft
    import torch
    import transformers

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(config_yaml)
    plot_loss_curve(history, eval_history, dest / "loss_curve.png")
    resolved = lineage.resolved()
    report = {
        "format": REPORT_FORMAT,
        **summary,
        "lineage": {**asdict(resolved), "seed": config["seed"]},
        "config": config,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "machine": platform.machine(),
        },
        "history": history,
        "eval_history": eval_history,
        "loss_curve": "loss_curve.png",
    }
    path = dest / "training_report.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    return path
