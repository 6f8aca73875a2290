"""S3CheckpointStore: the engine's CheckpointStore over the artifact store, so that a job
resumed on another worker (another machine) continues from the last checkpoint.

Each checkpoint is a folder artifact named `training/<job_id>/checkpoints/step-<N>`. The
store writes the folder's manifest last, under that name, so a checkpoint is visible whole
or not at all: a worker killed mid-save leaves blobs nobody lists, and the previous
checkpoint stays the latest. A name may be published again (the final checkpoint is saved
again when a run that had already finished is resumed), so checkpoint names are the one
place where this store overwrites. Older checkpoints beyond `keep_last` are unpublished;
their blobs stay until the store is swept (other artifacts may share them).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from posttrain.storage import ArtifactStore

log = logging.getLogger(__name__)

_STEP = re.compile(r"step-(\d{8,})")


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
