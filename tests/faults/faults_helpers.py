"""What the fault-injection suite's conftest and tests share: the fault table, the
pipeline handle, a wait helper (a module of its own: 'conftest' imports could collide
with another folder's)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from posttrain.rpc import make_channel
from posttrain.stack import LocalStack
from posttrain.stack.services import ServiceProcesses
from posttrain.storage import ArtifactStore

TENANT = "acme"
BASE_MODEL = "tiny-llama"

# The crash points each service starts with (posttrain.faults), each fires once; the
# trainer has none: it is killed from outside mid-training.
CRASH_POINTS = {
    "intake": "intake.upload.after_commit",
    "registry": "consumer.after_db_commit,outbox.after_publish",
    "evaluator": "evaluator.mid_evaluation",
    "gateway": "gateway.mid_deployment,outbox.before_publish",
}


@dataclass
class FaultRow:
    fault: str
    where: str
    survived: bool
    duplicates: str
    losses: str


@dataclass
class FaultTable:
    rows: list[FaultRow] = field(default_factory=list)

    def add(self, fault: str, where: str, survived: bool, duplicates="0", losses="0") -> None:
        self.rows.append(FaultRow(fault, where, survived, str(duplicates), str(losses)))

    def lines(self) -> list[str]:
        head = ("fault", "where", "survived", "duplicates", "losses")
        cells = [head] + [
            (r.fault, r.where, "yes" if r.survived else "NO", r.duplicates, r.losses)
            for r in self.rows
        ]
        widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
        out = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
        out.insert(1, "  ".join("-" * w for w in widths))
        survived = sum(r.survived for r in self.rows)
        out.append(f"{len(self.rows)} faults injected, {survived} survived")
        return out


TABLE = FaultTable()


def wait_for(what: str, probe: Callable[[], object], timeout_s: float, every_s: float = 0.3):
    """probe()'s first truthy value; fails naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every_s)


@dataclass
class Pipeline:
    stack: LocalStack
    services: ServiceProcesses
    keys: dict[str, str]
    store: ArtifactStore
    state_dir: Path
    table: FaultTable
    flow: dict = field(default_factory=dict)  # what earlier steps made, for later ones
    channels: list = field(default_factory=list)

    def channel(self, service: str, who: str = "admin"):
        channel = make_channel(self.services.address(service), api_key=self.keys[who])
        self.channels.append(channel)
        # Connected before the first call: a fault must hit the call, not its connecting.
        grpc.channel_ready_future(channel).result(timeout=60)
        return channel

    def log(self, service: str) -> str:
        return self.services.log_path(service).read_text(errors="replace")

    def crashed_at(self, service: str, point: str, timeout_s: float = 120.0) -> bool:
        """True when `service` died of SIGKILL at crash point `point` (its log says so)."""
        code = self.services.wait_exit(service, timeout_s)
        return code == -9 and f"FAULT: crash point {point} reached" in self.log(service)

    def restart(self, service: str) -> None:
        self.services.restart(service)
        self.services.wait_healthy([service], timeout_s=180)
