"""LocalStack: start, check and stop the local stack's processes under one state directory.

Layout of the state directory:
  stack.json            ports and credentials of this stack (so `status`/`down` find it)
  pids/<name>.json      pid and process start time (a reused pid is never killed)
  logs/<name>.log       stdout+stderr of each server
  <name>/               each server's own data
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import psutil

from posttrain.config import (
    DEFAULT_KAFKA_PORT,
    DEFAULT_S3_PORT,
    DEFAULT_TRITON_GRPC_PORT,
    DEFAULT_TRITON_HTTP_PORT,
    S3Settings,
)
from posttrain.stack.components import COMPONENTS, Component, component_log


class StackError(RuntimeError):
    """A component failed to start or stop; the message names it and its log file."""


@dataclass
class StackPorts:
    kafka: int = DEFAULT_KAFKA_PORT
    s3: int = DEFAULT_S3_PORT
    s3_grpc: int = DEFAULT_S3_PORT + 1
    s3_master: int = 19333
    s3_master_grpc: int = 19334
    s3_volume: int = 19340
    s3_volume_grpc: int = 19341
    s3_filer: int = 18888
    s3_filer_grpc: int = 18889
    s3_admin: int = 18646
    s3_admin_grpc: int = 18647
    triton_grpc: int = DEFAULT_TRITON_GRPC_PORT
    triton_http: int = DEFAULT_TRITON_HTTP_PORT

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> StackPorts:
        """Defaults, each overridable as POSTTRAIN_STACK_PORT_<NAME> (e.g. ..._KAFKA=9092)."""
        env = os.environ if environ is None else environ
        ports = cls()
        for f in fields(cls):
            raw = env.get(f"POSTTRAIN_STACK_PORT_{f.name.upper()}")
            if raw:
                if not raw.isdigit() or not 0 < int(raw) < 65536:
                    raise StackError(f"POSTTRAIN_STACK_PORT_{f.name.upper()}={raw!r} is not a port")
                setattr(ports, f.name, int(raw))
        return ports

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> StackPorts:
        """Ports the OS reports free right now: for test runs that must not clash."""
        socks = []
        try:
            for _ in fields(cls):
                s = socket.socket()
                s.bind((host, 0))
                socks.append(s)
            return cls(*[s.getsockname()[1] for s in socks])
        finally:
            for s in socks:
                s.close()


@dataclass
class ComponentStatus:
    name: str
    running: bool
    healthy: bool
    pid: int | None
    endpoint: str
    log: str


@dataclass
class LocalStack:
    state_dir: Path
    ports: StackPorts = field(default_factory=StackPorts)
    host: str = "127.0.0.1"
    s3_access_key: str = "posttrain"
    s3_secret_key: str = ""
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        if not self.s3_secret_key:
            self.s3_secret_key = "posttrain-local-secret"

    # ------------------------------------------------------------------ persistence

    @classmethod
    def load_or_create(
        cls, state_dir: Path, ports: StackPorts | None = None, *, random_secret: bool = False
    ) -> LocalStack:
        """The stack recorded in state_dir/stack.json, or a new one recorded there.

        A recorded stack keeps its ports and credentials: a running stack must be found
        again by `status` and `down` whatever the defaults are today."""
        path = Path(state_dir) / "stack.json"
        if path.exists():
            saved = json.loads(path.read_text())
            return cls(
                state_dir=Path(state_dir),
                ports=StackPorts(**saved["ports"]),
                host=saved["host"],
                s3_access_key=saved["s3_access_key"],
                s3_secret_key=saved["s3_secret_key"],
            )
        stack = cls(
            state_dir=Path(state_dir),
            ports=ports or StackPorts(),
            s3_secret_key=secrets.token_urlsafe(24) if random_secret else "",
        )
        stack.save()
        return stack

    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / "stack.json"
        data = {
            "host": self.host,
            "ports": asdict(self.ports),
            "s3_access_key": self.s3_access_key,
            "s3_secret_key": self.s3_secret_key,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.chmod(0o600)
        tmp.replace(path)

    # ------------------------------------------------------------------ endpoints

    def component_dir(self, name: str) -> Path:
        return self.state_dir / name

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.ports.kafka}"

    @property
    def s3_endpoint(self) -> str:
        return f"{self.host}:{self.ports.s3}"

    @property
    def triton_grpc_url(self) -> str:
        return f"{self.host}:{self.ports.triton_grpc}"

    @property
    def triton_http_url(self) -> str:
        return f"{self.host}:{self.ports.triton_http}"

    @property
    def triton_model_repository(self) -> Path:
        return self.component_dir("triton") / "models"

    def s3_settings(self, bucket: str = "posttrain") -> S3Settings:
        return S3Settings(
            endpoint=self.s3_endpoint,
            access_key=self.s3_access_key,
            secret_key=self.s3_secret_key,
            secure=False,
            bucket=bucket,
        )

    def service_env(self) -> dict[str, str]:
        """Environment variables that point a posttrain service at this stack."""
        return {
            "POSTTRAIN_KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "POSTTRAIN_S3_ENDPOINT": self.s3_endpoint,
            "POSTTRAIN_S3_ACCESS_KEY": self.s3_access_key,
            "POSTTRAIN_S3_SECRET_KEY": self.s3_secret_key,
            "POSTTRAIN_S3_SECURE": "false",
            "POSTTRAIN_TRITON_GRPC_URL": self.triton_grpc_url,
            "POSTTRAIN_TRITON_HTTP_URL": self.triton_http_url,
            "POSTTRAIN_TRITON_MODEL_REPOSITORY": str(self.triton_model_repository),
        }

    # ------------------------------------------------------------------ lifecycle

    def up(self, components: list[str] | None = None) -> list[ComponentStatus]:
        """Start what is not already running and healthy; wait until each is healthy.

        Idempotent: a healthy component is left alone. A component that fails to become
        healthy is stopped and a StackError names it, its log and the log's last lines."""
        self.save()
        for name in self._names(components):
            comp = COMPONENTS[name]
            if self._pid(name) is not None and comp.is_healthy(self):
                continue
            self._stop_one(comp)  # a dead or wedged leftover: clear it first
            self._start_one(comp)
        return self.status(components)

    def down(self, components: list[str] | None = None) -> list[str]:
        """Stop components (all by default), reverse start order; returns those stopped."""
        stopped = []
        for name in reversed(self._names(components)):
            if self._stop_one(COMPONENTS[name]):
                stopped.append(name)
        return stopped

    def status(self, components: list[str] | None = None) -> list[ComponentStatus]:
        result = []
        for name in self._names(components):
            comp = COMPONENTS[name]
            pid = self._pid(name)
            result.append(
                ComponentStatus(
                    name=name,
                    running=pid is not None,
                    healthy=pid is not None and comp.is_healthy(self),
                    pid=pid,
                    endpoint=comp.endpoint(self),
                    log=str(component_log(self, name)),
                )
            )
        return result

    def restart(self, name: str) -> None:
        """Stop and start one component (used by fault tests: broker or S3 restart)."""
        comp = COMPONENTS[name]
        self._stop_one(comp)
        self._start_one(comp)

    def kill(self, name: str) -> None:
        """SIGKILL one component without cleanup, as a crash would."""
        pid = self._pid(name)
        if pid is not None:
            os.killpg(pid, signal.SIGKILL)
            self._reap(name, pid, timeout=5)

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _names(components: list[str] | None) -> list[str]:
        names = list(COMPONENTS) if components is None else components
        unknown = [n for n in names if n not in COMPONENTS]
        if unknown:
            raise StackError(f"unknown component(s) {unknown}; known: {sorted(COMPONENTS)}")
        return names

    def _pid_file(self, name: str) -> Path:
        return self.state_dir / "pids" / f"{name}.json"

    def _pid(self, name: str) -> int | None:
        """The component's pid if that very process is alive (pid + start time match)."""
        path = self._pid_file(name)
        if not path.exists():
            return None
        try:
            saved = json.loads(path.read_text())
            proc = psutil.Process(saved["pid"])
            if abs(proc.create_time() - saved["create_time"]) > 0.01:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return int(saved["pid"])
        except (psutil.Error, ValueError, KeyError, json.JSONDecodeError):
            return None

    def _start_one(self, comp: Component) -> None:
        comp.prepare(self)
        log_path = component_log(self, comp.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._pid_file(comp.name).parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **comp.env(self)}
        try:
            argv = comp.argv(self)
        except Exception as exc:  # a missing binary: say which component
            raise StackError(f"{comp.name}: cannot start: {exc}") from exc
        with open(log_path, "ab") as log:
            log.write(f"\n=== start {time.strftime('%Y-%m-%dT%H:%M:%S')} {argv}\n".encode())
            log.flush()
            # Own session = own process group: `down` can stop the server and its children.
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.component_dir(comp.name)
                if self.component_dir(comp.name).exists()
                else None,
                start_new_session=True,
            )
        self._procs[comp.name] = proc
        record = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time()}
        self._pid_file(comp.name).write_text(json.dumps(record))
        deadline = time.monotonic() + comp.start_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._stop_one(comp)
                raise StackError(
                    f"{comp.name} exited with code {proc.returncode} during start-up; "
                    f"log: {log_path}\n{_tail(log_path)}"
                )
            if comp.is_healthy(self):
                return
            time.sleep(0.2)
        self._stop_one(comp)
        raise StackError(
            f"{comp.name} did not become healthy within {comp.start_timeout_s:.0f}s; "
            f"log: {log_path}\n{_tail(log_path)}"
        )

    def _stop_one(self, comp: Component) -> bool:
        pid = self._pid(comp.name)
        if pid is None:
            self._pid_file(comp.name).unlink(missing_ok=True)
            self._procs.pop(comp.name, None)
            return False
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not self._reap(comp.name, pid, comp.stop_timeout_s):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap(comp.name, pid, 5.0)
        self._pid_file(comp.name).unlink(missing_ok=True)
        return True

    def _reap(self, name: str, pid: int, timeout: float) -> bool:
        """Wait for the process group to go; True when nothing of it is left."""
        proc = self._procs.get(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None:
                proc.poll()  # collect our own child so it is not left a zombie
            if not _group_alive(pid):
                self._procs.pop(name, None)
                return True
            time.sleep(0.1)
        return False


def _group_alive(pgid: int) -> bool:
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error, PermissionError):
            continue
    return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])
