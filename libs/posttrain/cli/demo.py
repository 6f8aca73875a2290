"""`posttrain demo`: the end-to-end demo on the embedded local stack."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click


@click.command()
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=Path(os.environ.get("POSTTRAIN_STATE_DIR", ".posttrain")) / "demo",
    show_default=True,
    help="where the demo's stack, databases and logs live",
)
@click.option("--train-steps", default=40, show_default=True, help="LoRA optimizer steps")
@click.option("--eval-cases-per-tag", default=3, show_default=True, help="suite cases per tag")
@click.option("--ab-users", default=64, show_default=True, help="simulated users in the A/B test")
@click.option(
    "--ab-min-sample",
    default=24,
    show_default=True,
    help="feedback records per arm before the A/B report gives a verdict",
)
@click.option("--keep-running", is_flag=True, help="leave the stack and services up afterwards")
def demo(
    state_dir: Path,
    train_steps: int,
    eval_cases_per_tag: int,
    ab_users: int,
    ab_min_sample: int,
    keep_running: bool,
) -> None:
    """Run one model change through the whole pipeline (about 10-15 minutes on 2 CPUs)."""
    from posttrain.demo.run import DemoConfig, run_demo

    config = DemoConfig(
        state_dir=state_dir.resolve(),
        train_steps=train_steps,
        eval_cases_per_tag=eval_cases_per_tag,
        ab_users=ab_users,
        ab_min_sample=ab_min_sample,
        keep_running=keep_running,
    )
    sys.exit(run_demo(config))
