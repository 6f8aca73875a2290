"""Training workers as real processes (`python -m services.trainer worker`) sharing one
SQLite file with the API: kill -9 a worker mid-job and the job finishes on another one,
resumed from its last checkpoint with every step's data trained exactly once; and a
worker started while another is busy takes the next job at once."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from trainer_helpers import FAST, wait_for

from posttrain.data.chat_template import encode_rows
from posttrain.storage import ArtifactRef
from posttrain.trainer import JobProgressRow, S3CheckpointStore
from posttrain.training import TrainingJobConfig, load_tokenizer, run_training
from posttrain.training.batching import epoch_order, plan_epoch
from posttrain.v1 import training_pb2

REPO = Path(__file__).resolve().parents[3]
# 48 rows, 4 per step: 12 steps an epoch, so the run crosses 3 epoch boundaries (each a
# new shuffle). Dropout is on, so a resume must also restore the RNG.
RESUME_JOB = {
    "max_steps": "48",
    "batch_size": "2",
    "grad_accum": "2",
    "lr": "5e-3",
    "rank": "4",
    "alpha": "8",
    "dropout": "0.1",
    "checkpoint_every": "3",
    "seed": "11",
}


class WorkerProcess:
    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"worker-{name}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.trainer", "worker"],
                cwd=REPO,
                env={**env, "POSTTRAIN_WORKER_ID": name},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def worker_processes(sqlite_trainer, stack, tmp_path: Path):
    """Start worker processes against the test's SQLite file, Kafka group and bucket."""
    trainer = sqlite_trainer
    env = {
        **os.environ,
        "POSTTRAIN_DB_URL": str(trainer.engine.url),
        "POSTTRAIN_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "POSTTRAIN_S3_ENDPOINT": stack.s3.endpoint,
        "POSTTRAIN_S3_ACCESS_KEY": stack.s3.access_key,
        "POSTTRAIN_S3_SECRET_KEY": stack.s3.secret_key,
        "POSTTRAIN_S3_BUCKET": trainer.store.bucket,
        "POSTTRAIN_WORKER_GROUP": trainer.settings.worker_group,
        "POSTTRAIN_WORKER_HEARTBEAT_INTERVAL_S": "0.5",
        "POSTTRAIN_WORKER_STALE_AFTER_S": "3",
        "POSTTRAIN_WORKER_SCAN_INTERVAL_S": "0.3",
        "POSTTRAIN_WORKER_TORCH_THREADS": "1",
    }
    started: list[WorkerProcess] = []

    def start(name: str) -> WorkerProcess:
        # A state folder (model cache, work folders) each: as if on another machine.
        state = tmp_path / f"state-{name}"
        state.mkdir()
        process = WorkerProcess(name, {**env, "POSTTRAIN_STATE_DIR": str(state)}, tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.mark.slow
def test_kill_9_mid_job_resumes_on_another_worker(sqlite_trainer, worker_processes, tmp_path):
    trainer = sqlite_trainer
    job = trainer.submit(hyperparameters=RESUME_JOB)
    config = TrainingJobConfig.from_yaml(job.config_yaml)
    # The run it must match: the same config, rows and seed, uninterrupted.
    reference = run_training(
        dataclasses.replace(config, base_model=str(trainer.inputs.base_dir)),
        trainer.inputs.train_rows,
        trainer.inputs.eval_rows,
        tmp_path / "reference",
    )

    a = worker_processes("A")
    checkpoints = S3CheckpointStore(trainer.store, job.job_id)
    # Killed once it has a checkpoint and has gone past it: that work dies with it.
    wait_for(
        "A past its first checkpoint",
        lambda: checkpoints.latest_step() and trainer.job(job.job_id).step >= 4,
        timeout_s=120,
        every_s=0.05,
    )
    a.kill9()
    killed = trainer.job(job.job_id)
    assert (killed.state, killed.worker_id, killed.attempt) == ("RUNNING", "A", 1)
    assert killed.step < 48, "A finished before it was killed: make the job longer"
    resumed_from = checkpoints.latest_step()  # what A left whole: the latest complete save

    b = worker_processes("B")
    done = trainer.wait_state(job.job_id, "SUCCEEDED", timeout_s=240)
    assert b.stop() == 0
    assert (done.step, done.total_steps) == (48, 48)
    assert (done.worker_id, done.attempt, done.resumed_from_step) == ("B", 2, resumed_from)
    assert f"worker B runs job {job.job_id} (attempt 2)" in b.text()

    # Progress rows: A ran steps 1..k; B ran resumed_from+1..48, each once, in order. The
    # steps A ran after its last checkpoint died with it and were run again by B, on the
    # same data: the same losses.
    rows = _progress(trainer, job.job_id)
    by_a = [r for r in rows if r.attempt == 1]
    by_b = [r for r in rows if r.attempt == 2]
    assert [r.step for r in by_a] == list(range(1, killed.step + 1))
    assert [r.step for r in by_b] == list(range(resumed_from + 1, 49))
    assert {r.worker_id for r in by_a} == {"A"} and {r.worker_id for r in by_b} == {"B"}
    redone = {r.step: r.loss for r in by_a if r.step > resumed_from}
    for r in by_b:
        if r.step in redone:
            assert r.loss == pytest.approx(redone[r.step], abs=1e-5)

    # The trained model's history: steps 1..48 exactly once, each on the rows the sampler
    # planned for it, with the uninterrupted run's data and losses.
    report = trainer.store.download_folder(ArtifactRef(**done.artifacts[-1]), tmp_path / "report")
    summary = json.loads((report / "training_report.json").read_text())
    assert summary["resumed_from_step"] == resumed_from and summary["steps"] == 48
    history = summary["history"]
    assert [h["step"] for h in history] == list(range(1, 49))
    planned = _planned_rows(config, trainer)
    for h, (rows_of_step, tokens) in zip(history, planned, strict=True):
        assert h["tokens"] == tokens, f"step {h['step']} trained other rows than {rows_of_step}"
    for ours, ref in zip(history, reference.history, strict=True):
        assert (ours["epoch"], ours["tokens"], ours["label_tokens"]) == (
            ref["epoch"],
            ref["tokens"],
            ref["label_tokens"],
        )
        assert ours["loss"] == pytest.approx(ref["loss"], abs=1e-5)
    assert [h["epoch"] for h in history] == [s // 12 for s in range(48)]


@pytest.mark.slow
def test_a_worker_started_while_another_is_busy_takes_the_next_job(
    sqlite_trainer, worker_processes
):
    trainer = sqlite_trainer
    busy = worker_processes("P")
    endless = {**FAST, "max_steps": "100000", "batch_size": "2", "checkpoint_every": "100000"}
    long_job = trainer.submit(hyperparameters=endless)
    wait_for("P to train", lambda: trainer.job(long_job.job_id).step >= 1, timeout_s=120)
    short_job = trainer.submit()  # its event may well reach P, which is busy
    added = worker_processes("Q")
    done = trainer.wait_state(short_job.job_id, "SUCCEEDED", timeout_s=120)
    assert done.worker_id == "Q"
    still = trainer.job(long_job.job_id)
    assert (still.state, still.worker_id) == ("RUNNING", "P")

    trainer.stub("alice").CancelJob(training_pb2.CancelJobRequest(job_id=long_job.job_id))
    trainer.wait_state(long_job.job_id, "CANCELLED", timeout_s=60)
    assert busy.stop() == 0 and added.stop() == 0


# ---------------------------------------------------------------- helpers


def _progress(trainer, job_id: str) -> list[JobProgressRow]:
    with Session(trainer.engine) as session:
        return list(
            session.scalars(
                sa.select(JobProgressRow)
                .where(JobProgressRow.job_id == job_id)
                .order_by(JobProgressRow.id)
            )
        )


def _planned_rows(config: TrainingJobConfig, trainer) -> list[tuple[list[int], int]]:
    """(row indices, their tokens) of each step, from the sampler's plan."""
    tokenizer = load_tokenizer(trainer.inputs.base_dir)
    encoded, _ = encode_rows(
        trainer.inputs.train_rows,
        tokenizer,
        max_seq_len=config.max_seq_len,
        truncation=config.truncation,
    )
    lengths = [len(e) for e in encoded]
    steps: list[tuple[list[int], int]] = []
    epoch = 0
    while len(steps) < config.max_steps:
        plan = plan_epoch(
            epoch_order(len(encoded), config.seed, epoch),
            lengths,
            batch_size=config.batch_size,
            grad_accum=config.grad_accum,
            packing=config.packing,
            max_seq_len=config.max_seq_len,
        )
        for step in plan:
            rows = [i for micro in step for sequence in micro for i in sequence]
            steps.append((rows, sum(lengths[i] for i in rows)))
        epoch += 1
    return steps[: config.max_steps]
