"""`posttrain train ...` against the in-process trainer service; the job is moved along
through the job book as a worker would."""

from __future__ import annotations

import json

from click.testing import CliRunner
from trainer_helpers import APPROVED_VERSION

from posttrain.cli import cli
from posttrain.db import session_scope
from posttrain.events import add_to_outbox
from posttrain.trainer import Completion, JobBook
from posttrain.training import ProgressEvent


def _run(trainer, who: str, *args: str):
    return CliRunner().invoke(
        cli, ["train", *args, "--target", trainer.server.address, "--api-key", trainer.keys[who]]
    )


def _submit(trainer, *extra: str):
    return _run(
        trainer,
        "alice",
        "submit",
        "--base-model",
        "tiny-llama",
        "--dataset",
        "support",
        "--version",
        APPROVED_VERSION,
        "--output-name",
        "cli-bot",
        *extra,
    )


def _train_as_a_worker(trainer, job_id: str, steps: int) -> None:
    with session_scope(trainer.engine) as session:

        def emit(event_type, payload, *, aggregate_id):
            add_to_outbox(session, event_type, payload, producer="test", aggregate_id=aggregate_id)

        book = JobBook(session, emit)
        claim = book.claim(job_id, "w1", stale_after_s=30)
        for step in range(1, steps + 1):
            event = ProgressEvent(step, steps, 0, 3.0 - step / 10, 1e-3, 0.5, 900.0, 1.0, None)
            book.record_progress(job_id, "w1", claim.attempt, event)
        book.complete(
            job_id,
            "w1",
            claim.attempt,
            Completion(
                artifacts=[trainer.inputs.weights],
                kind="adapter",
                metrics={},
                steps=steps,
                total_steps=steps,
                final_loss=2.7,
                resumed_from_step=None,
                code_version="test",
                seed=0,
            ),
        )


def test_submit_list_show_watch_through_the_cli(sqlite_trainer):
    trainer = sqlite_trainer
    submitted = _submit(trainer, "--set", "max_steps=3", "--set", "rank=4", "--json")
    assert submitted.exit_code == 0, submitted.output
    job = json.loads(submitted.output)
    assert job["state"] == "JOB_STATE_QUEUED" and "max_steps: 3" in job["config_yaml"]

    refused = _submit(trainer, "--set", "lr=fast")
    assert refused.exit_code == 1
    assert "INVALID_ARGUMENT" in refused.output and "hyperparameters.lr" in refused.output
    assert _submit(trainer, "--set", "lr").exit_code == 2  # not KEY=VALUE: usage

    listed = _run(trainer, "eve", "list", "--json")
    assert [j["job_id"] for j in json.loads(listed.output)] == [job["job_id"]]
    table = _run(trainer, "eve", "list", "--state", "QUEUED")
    assert table.exit_code == 0 and job["job_id"][:8] in table.output

    _train_as_a_worker(trainer, job["job_id"], steps=3)
    shown = _run(trainer, "eve", "show", job["job_id"], "--config")
    assert shown.exit_code == 0
    assert "SUCCEEDED" in shown.output and "step 3/3" in shown.output
    assert "max_steps: 3" in shown.output and "base-models/tiny-llama" in shown.output

    watched = _run(trainer, "eve", "watch", job["job_id"])
    assert watched.exit_code == 0, watched.output
    assert f"job {job['job_id']}: SUCCEEDED at step 3/3" in watched.output
    lines = _run(trainer, "eve", "watch", job["job_id"], "--json").output.splitlines()
    updates = [json.loads(line) for line in lines]
    assert [u.get("step") for u in updates[:-1]] == ["1", "2", "3"]
    assert updates[-1]["state"] == "JOB_STATE_SUCCEEDED"


def test_cancel_and_the_watch_exit_code(sqlite_trainer):
    trainer = sqlite_trainer
    job_id = json.loads(_submit(trainer, "--json").output)["job_id"]
    assert _run(trainer, "eve", "cancel", job_id).exit_code == 1  # viewers can't
    cancelled = _run(trainer, "alice", "cancel", job_id, "--reason", "wrong base")
    assert cancelled.exit_code == 0 and "CANCELLED" in cancelled.output
    watched = _run(trainer, "eve", "watch", job_id)
    assert watched.exit_code == 5 and "CANCELLED" in watched.output


def test_submit_asks_for_processes_and_a_bad_count_is_refused_by_field(sqlite_trainer):
    trainer = sqlite_trainer
    refused = _submit(trainer, "--processes", "-1")
    assert refused.exit_code == 1
    assert "INVALID_ARGUMENT" in refused.output and "resources.processes" in refused.output
    one = json.loads(_submit(trainer, "--processes", "1", "--json").output)
    assert one["resources"]["processes"] == 1
