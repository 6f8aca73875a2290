"""The SFT recipe: one job config, two JSONL files, one output folder.

    python -m posttrain.training configs/smollm2_135m_lora_cpu.yaml \\
        --train train.jsonl [--eval eval.jsonl] --out runs/demo [key=value ...]

Overrides are TrainingJobConfig keys (`lr=1e-4`, `method_config.rank=8`). Re-running with
the same --out resumes from its latest checkpoint. Prints one line per step and the
result as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from posttrain.training import LocalCheckpointStore, ProgressEvent, TrainingJobConfig, run_training


def _print_progress(event: ProgressEvent) -> None:
    eval_part = f" eval {event.eval_loss:.4f}" if event.eval_loss is not None else ""
    print(
        f"step {event.step}/{event.total_steps} loss {event.loss:.4f} lr {event.learning_rate:.2e} "
        f"{event.tokens_per_second:.0f} tok/s eta {event.eta_seconds:.0f}s{eval_part}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m posttrain.training", description=__doc__)
    parser.add_argument("config", type=Path, help="a TrainingJobConfig YAML file")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--train", type=Path, required=True, help="training rows (JSONL)")
    parser.add_argument("--eval", type=Path, default=None, help="eval rows (JSONL)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args(argv)

    config = TrainingJobConfig.from_yaml(args.config.read_text()).with_overrides(args.overrides)
    result = run_training(
        config,
        args.train,
        args.eval,
        args.out,
        LocalCheckpointStore(args.out / "checkpoints", keep_last=2),
        progress=_print_progress,
    )
    summary = {
        "status": result.status,
        "artifact_dir": str(result.artifact_dir),
        "artifact_kind": result.artifact_kind,
        "metrics": result.metrics,
        "trainable_params": result.trainable_params,
        "tokens": result.tokens,
        "wall_time_s": round(result.wall_time_s, 1),
        "peak_memory_mib": round(result.peak_memory_bytes / 2**20),
        "report": str(result.report_path),
        "data": result.data,
    }
    print(json.dumps(summary, indent=2))
    return 0 if result.status == "completed" else 3


if __name__ == "__main__":
    sys.exit(main())
