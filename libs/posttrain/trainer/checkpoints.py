"""S3CheckpointStore: the engine's CheckpointStore over the artifact store, so that a job
resumed on another worker (another machine) continues from the last checkpoint.

Each checkpoint is a folder artifact named `training/<job_id>/checkpoints/step-<N>`. The
store writes the folder's manifest last, under that name, so a checkpoint is visible whole
or not at all: a worker killed mid-save leaves blobs nobody lists, and the previous
checkpoint stays the latest. A name may be published again (the final checkpoint is saved
again when a run that had already finished is resumed), so checkpoint names are the one
place where this store overwrites. Older checkpoints beyond `keep_last` are unpublished;
their blobs stay until the store is swept (other artifacts may share them).

A job of several processes (torchrun) builds its store in rank 0 of the launched recipe:
`store_from_env`, the recipe's --checkpoint-store factory, reads the job id, keep_last and
the S3 settings from the environment `launch_env` gives those processes; the worker
fences a run it lost by creating OUT/FENCE_FILE, and the store then refuses to save.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from posttrain.config import S3Settings
from posttrain.storage import ArtifactStore

log = logging.getLogger(__name__)

_STEP = re.compile(r"step-(\d{8,})")
JOB_ID_ENV = "POSTTRAIN_CHECKPOINT_JOB_ID"
KEEP_LAST_ENV = "POSTTRAIN_CHECKPOINT_KEEP_LAST"  # 0: keep every checkpoint
FENCE_FILE = "OWNERSHIP_LOST"  # in the run's output folder: this attempt may not save
STORE_FACTORY = f"{__name__}:store_from_env"


def checkpoint_prefix(job_id: str) -> str:
    return f"training/{job_id}/checkpoints/"


class S3CheckpointStore:
    """Checkpoints of one job. `before_save` runs before each save and may raise to refuse
    it (the worker's ownership check: a worker that lost its job must not write)."""

    def __init__(
        self,
        store: ArtifactStore,
        job_id: str,
        *,
        keep_last: int | None = 2,
        before_save: Callable[[], None] | None = None,
    ) -> None:
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
        self.store = store
        self.job_id = job_id
        self.prefix = checkpoint_prefix(job_id)
        self.keep_last = keep_last
        self.before_save = before_save

    def name(self, step: int) -> str:
        return f"{self.prefix}step-{step:08d}"

    def save(self, step: int, source: Path) -> str:
        if self.before_save is not None:
            self.before_save()
        ref = self.store.put_folder(
            source,
            self.name(step),
            metadata={"kind": "checkpoint", "job_id": self.job_id, "step": str(step)},
            overwrite=True,
        )
        if self.keep_last:
            for old in self.steps()[: -self.keep_last]:
                self.store.delete(self.name(old))
        log.info("checkpoint of job %s at step %d: %s", self.job_id, step, ref.uri)
        return ref.uri

    def steps(self) -> list[int]:
        found = []
        for name in self.store.list_artifacts(self.prefix):
            match = _STEP.fullmatch(name.removeprefix(self.prefix))
            if match:
                found.append(int(match.group(1)))
        return sorted(found)

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def load(self, step: int, dest: Path) -> Path:
        return self.store.download_folder(self.name(step), dest)


def launch_env(job_id: str, keep_last: int | None, s3: S3Settings | None) -> dict[str, str]:
    """What the launched processes of a job need, beside the worker's own environment, to
    build its S3CheckpointStore (`s3`: None = the POSTTRAIN_S3_* they inherit)."""
    env = {JOB_ID_ENV: job_id, KEEP_LAST_ENV: str(keep_last or 0)}
    if s3 is not None:
        prefix = S3Settings.model_config["env_prefix"]
        env |= {f"{prefix}{k.upper()}": str(v) for k, v in s3.model_dump().items()}
    return env


def store_from_env(out: Path) -> S3CheckpointStore:
    """The job's S3CheckpointStore in a launched process (see launch_env)."""
    out = Path(out)

    def unfenced() -> None:
        if (out / FENCE_FILE).exists():
            raise RuntimeError(f"the worker lost job {os.environ[JOB_ID_ENV]}: no checkpoint")

    return S3CheckpointStore(
        ArtifactStore.from_settings(S3Settings()),
        os.environ[JOB_ID_ENV],
        keep_last=int(os.environ.get(KEEP_LAST_ENV, "2")) or None,
        before_save=unfenced,
    )
