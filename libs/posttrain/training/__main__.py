"""The SFT recipe: one job config, two JSONL files, one output folder.

    python -m posttrain.training configs/smollm2_135m_lora_cpu.yaml \\
        --train train.jsonl [--eval eval.jsonl] --out runs/demo [key=value ...]

Overrides are TrainingJobConfig keys (`lr=1e-4`, `method_config.rank=8`). Re-running with
the same --out resumes from its latest checkpoint. Prints one line per step and the
result as JSON.

Exit code 0 completed, 3 cancelled (0 under torchrun: the report says "cancelled").
Under torchrun (`posttrain.training.distributed.torchrun_command`) every rank runs this;
only rank 0 prints, writes --progress-file and reads --cancel-file.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
from pathlib import Path

from posttrain.training import (
    CheckpointStore,
    LocalCheckpointStore,
    ProgressEvent,
    TrainingJobConfig,
    run_training,
)


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
    parser.add_argument(
        "--progress-file", type=Path, default=None, help="append each step's event as JSON"
    )
    parser.add_argument(
        "--cancel-file", type=Path, default=None, help="stop with a checkpoint once it exists"
    )
    parser.add_argument(
        "--checkpoint-store",
        default=None,
        help="MODULE:FACTORY called as FACTORY(out) for the CheckpointStore "
        "(default: LocalCheckpointStore(OUT/checkpoints, keep_last=2))",
    )
    parser.add_argument(
        "--checkpoint-staging",
        type=Path,
        default=None,
        help="where every rank writes sharded checkpoints: a folder all ranks see "
        "(default: OUT/checkpoint-staging; a shared volume when ranks span nodes)",
    )
    args = parser.parse_args(argv)
    main_rank = os.environ.get("RANK", "0") == "0"  # torchrun sets RANK

    def progress(event: ProgressEvent) -> None:  # only ever called on rank 0
        _print_progress(event)
        if args.progress_file is not None:
            with open(args.progress_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(dataclasses.asdict(event)) + "\n")

    cancel_file = args.cancel_file
    config = TrainingJobConfig.from_yaml(args.config.read_text()).with_overrides(args.overrides)
    result = run_training(
        config,
        args.train,
        args.eval,
        args.out,
        _checkpoint_store(args.checkpoint_store, args.out),
        progress=progress,
        should_cancel=(lambda: cancel_file.exists()) if cancel_file is not None else None,
        checkpoint_staging=args.checkpoint_staging,
    )
    # torchrun takes a rank's non-zero exit for a failure and stops the others; there a
    # cancel is read from the report (distributed.launch does).
    cancelled_code = 0 if "TORCHELASTIC_RUN_ID" in os.environ else 3
    if not main_rank:
        return 0 if result.status == "completed" else cancelled_code
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
    return 0 if result.status == "completed" else cancelled_code


def _checkpoint_store(factory: str | None, out: Path) -> CheckpointStore:
    if not factory:
        return LocalCheckpointStore(out / "checkpoints", keep_last=2)
    module, sep, name = factory.partition(":")
    if not sep:
        raise SystemExit(f"--checkpoint-store {factory!r} is not MODULE:FACTORY")
    return getattr(importlib.import_module(module), name)(out)


if __name__ == "__main__":
    sys.exit(main())
