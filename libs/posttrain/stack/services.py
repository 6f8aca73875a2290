"""The five services as real OS processes (`python -m services.<name>`) on one LocalStack:
started with their env, ports and log files, health-checked, stopped, killed with
SIGKILL and started again with the same environment. The demo and the fault-injection
suite (tests/faults/) run the pipeline through it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.stack.manager import LocalStack

SERVICES = ("intake", "registry", "trainer", "evaluator", "gateway")


class ServiceStartError(RuntimeError):
    """A service exited or did not become healthy; the message names its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServiceProcesses:
    """Services of one pipeline under `state_dir` (logs/<name>.log, <name>/ state)."""

    stack: LocalStack
    state_dir: Path
    common_env: dict[str, str] = field(default_factory=dict)  # on top of the stack's env
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in SERVICES:
            self.ports[name] = free_port()
            self.metrics_ports[name] = free_port()

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def env_for(self, name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {
            **os.environ,
            **self.stack.service_env(),
            "POSTTRAIN_INTAKE_TARGET": self.address("intake"),
            "POSTTRAIN_REGISTRY_TARGET": self.address("registry"),
            "POSTTRAIN_EVALUATOR_TARGET": self.address("evaluator"),
            "PYTHONUNBUFFERED": "1",
            **self.common_env,
            "POSTTRAIN_STATE_DIR": str(self.state_dir / name),
            "POSTTRAIN_GRPC_PORT": str(self.ports[name]),
            "POSTTRAIN_METRICS_PORT": str(self.metrics_ports[name]),
            **(extra or {}),
        }

    def start(self, name: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start `name` (with `extra_env` on top of the common env); returns at once."""
        if name in self.procs and self.procs[name].poll() is None:
            raise ServiceStartError(f"{name} is already running (pid {self.procs[name].pid})")
        env = self.env_for(name, extra_env)
        self.envs[name] = env
        return self._spawn(name, env)

    def restart(self, name: str) -> subprocess.Popen:
        """Start `name` again with the environment of its last start (after a crash)."""
        if self.procs[name].poll() is None:
            raise ServiceStartError(f"{name} is still running: kill or stop it first")
        return self._spawn(name, self.envs[name])

    def _spawn(self, name: str, env: dict[str, str]) -> subprocess.Popen:
        path = self.log_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as log:
            log.write(f"\n=== start {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            # Own session = own process group: a kill reaches the training subprocesses too.
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self.procs[name]

    def healthy(self, name: str) -> bool:
        """SERVING on its health service; raises if the process has exited."""
        from posttrain.rpc.healthcheck import check

        proc = self.procs[name]
        if proc.poll() is not None:
            raise ServiceStartError(
                f"{name} exited with code {proc.returncode}; see {self.log_path(name)}"
            )
        try:
            return check(self.address(name), timeout=1.0) == "SERVING"
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def wait_healthy(self, names: tuple[str, ...] | list[str] = SERVICES, timeout_s=120.0) -> None:
        deadline = time.monotonic() + timeout_s
        for name in names:
            while not self.healthy(name):
                if time.monotonic() > deadline:
                    raise ServiceStartError(
                        f"{name} did not become healthy in {timeout_s:.0f}s; "
                        f"see {self.log_path(name)}"
                    )
                time.sleep(0.3)

    def wait_exit(self, name: str, timeout_s: float) -> int | None:
        """The exit code once `name` has exited (a crash point fired), None on timeout."""
        try:
            return self.procs[name].wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill9(self, name: str) -> None:
        """SIGKILL the service's whole process group, as a crash or OOM kill would."""
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)

    def stop(self) -> None:
        """SIGTERM every running service (reverse start order), SIGKILL after 30 s."""
        running = [p for p in reversed(list(self.procs.values())) if p.poll() is None]
        for proc in running:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in running:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
