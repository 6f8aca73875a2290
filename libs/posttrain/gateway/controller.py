"""The deployment controller: a deployment.requested becomes something Triton serves and a
route that points at it, without restarting Triton.

For one request:
  1. idempotency: a deployment id already handled is answered from its row, nothing redone;
  2. wait (bounded) for Triton to answer;
  3. adapter: the base model folder is downloaded once per manifest sha256; one
     multi-adapter LLM Triton model serves each base (written and loaded the first time
     only); the adapter folder is installed under the model's adapter directory with an
     atomic link swap (posttrain.serving.install_adapter), so it goes live on its next
     request, with no reload. An adapter already installed with the same content is not
     touched: a rollback to it is a route flip.
     merged / full: the folder is downloaded and served as a Triton model of its own
     (write_merged_model + load_model), one per model version; it stays loaded, so a
     rollback to it is instant too;
  4. one tiny greedy request through tritonclient proves it answers;
  5. the route (tenant, use case, stage) points at it; the deployment it replaces is
     superseded; deployment.completed (ok, or failed with the reason) is staged in the
     same transaction (outbox).
A failure at 2-4 is answered as deployment.completed(ok=false, error=...) and leaves the
route as it was. Everything on disk lives under the layout's two folders, which Triton must
see at the same paths (see README: the shared volume).

Never: restart Triton, unload a model a route or an experiment may use, or delete an
installed adapter (rollback relies on it).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.orm import Session

from posttrain.db import utcnow
from posttrain.events import topics
from posttrain.faults import crash_point
from posttrain.gateway import metrics, names
from posttrain.gateway.tables import (
    FAILED,
    LIVE,
    SUPERSEDED,
    BaseModelRow,
    DeploymentRow,
    ExperimentRow,
    RouteRow,
)
from posttrain.gateway.triton import Sampling, TritonLLM
from posttrain.serving.repository import (
    LLMModelConfig,
    install_adapter,
    load_model,
    served_parameter,
    write_llm_model,
    write_merged_model,
)
from posttrain.storage import ArtifactRef, ArtifactStore
from posttrain.v1 import common_pb2, events_pb2

log = logging.getLogger(__name__)

KINDS = {
    common_pb2.MODEL_KIND_ADAPTER: "adapter",
    common_pb2.MODEL_KIND_MERGED: "merged",
    common_pb2.MODEL_KIND_FULL: "full",
}


class Emit(Protocol):
    def __call__(self, event_type: str, payload: Message, *, aggregate_id: str) -> Any: ...


class DeploymentRefused(Exception):
    """This deployment can never be served as requested; the message says why."""


@dataclass(frozen=True)
class ServingLayout:
    """Where the controller writes. Triton reads the same folders at the same paths.

    model_repository: Triton's --model-repository (config.pbtxt + version folders).
    cache_dir: downloaded folders and adapter directories, which Triton's models point at:
      bases/<sha256>/, artifacts/<sha256>/ (adapters, merged models), adapters/<model>/
      (the adapter directory of one LLM model), installed/<model>/<lora> (content markers).
    """

    model_repository: Path
    cache_dir: Path

    @classmethod
    def of(cls, model_repository: str | Path, cache_dir: str | Path = "") -> ServingLayout:
        repository = Path(model_repository).resolve()
        cache = Path(cache_dir).resolve() if cache_dir else repository / ".posttrain-cache"
        return cls(repository, cache)

    def folder(self, kind: str, sha256: str) -> Path:
        return self.cache_dir / kind / sha256

    def adapter_dir(self, triton_model: str) -> Path:
        return self.cache_dir / "adapters" / triton_model

    def marker(self, triton_model: str, lora_name: str) -> Path:
        return self.cache_dir / "installed" / triton_model / lora_name


@dataclass(frozen=True)
class ControllerOptions:
    """How models are written and checked; every field ends up in config.pbtxt or a wait."""

    streaming_models: bool = False  # also load a decoupled twin (<model>_stream) per model
    torch_threads: int = 0  # 0 = torch's default; 1 on a small shared CPU box
    device: str = "auto"  # cpu | cuda | cuda:N | auto
    dtype: str = "auto"  # float32 | bfloat16 | float16 | auto
    adapter_cache_size: int = 8  # adapters kept in memory per LLM model (LRU)
    max_batch_size: int = 16
    default_max_tokens: int = 64
    max_context_tokens: int | None = None
    load_timeout_s: float = 600.0  # one Triton model load
    triton_wait_s: float = 60.0  # how long an unreachable Triton is waited for
    smoke_timeout_s: float = 120.0  # the one greedy request that proves it answers
    smoke_prompt: str = "Hello"


@dataclass(frozen=True)
class ServedTarget:
    triton_model: str
    lora_name: str
    stream_model: str
    artifact_sha256: str


class DeploymentController:
    def __init__(
        self,
        store: ArtifactStore,
        triton: TritonLLM,
        layout: ServingLayout,
        options: ControllerOptions | None = None,
        *,
        on_route_change: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.triton = triton
        self.layout = layout
        self.options = options or ControllerOptions()
        self.on_route_change = on_route_change or (lambda: None)

    # ------------------------------------------------------------------ one deployment

    def handle(
        self, session: Session, request: events_pb2.DeploymentRequested, emit: Emit
    ) -> DeploymentRow:
        """Make `request` live (or record why not) in the caller's transaction; see the
        module docstring. Returns the deployment's row, new or already there."""
        if not 0 < len(request.deployment_id) <= 100:
            raise DeploymentRefused(f"deployment_id {request.deployment_id[:120]!r}: 1-100 chars")
        existing = session.get(DeploymentRow, request.deployment_id)
        if existing is not None:
            log.info("deployment %s already handled (%s)", existing.id, existing.status)
            return existing
        kind = KINDS.get(request.kind, "")
        started = time.monotonic()
        error = ""
        target = ServedTarget("", "", "", "")
        try:
            self._check(request, kind)
            self._wait_for_triton()
            target = self._make_servable(session, request, kind)
            self._smoke(target)
            crash_point("gateway.mid_deployment")  # loaded in Triton, nothing recorded
        except Exception as exc:  # noqa: BLE001 - any failure is answered, with its reason
            error = _reason(exc)
            log.warning("deployment %s failed: %s", request.deployment_id, error)
        seconds = time.monotonic() - started
        row = DeploymentRow(
            id=request.deployment_id,
            # Cut to the columns: a malformed request is answered too, never retried forever.
            tenant=request.tenant[:200],
            use_case=request.use_case[:100],
            stage=request.stage[:20],
            model_version_id=request.model_version_id[:200],
            kind=kind or str(request.kind),
            base_model=request.base_model[:200],
            artifact_sha256=target.artifact_sha256,
            triton_model=target.triton_model,
            lora_name=target.lora_name,
            stream_model=target.stream_model,
            status=FAILED if error else LIVE,
            error=error,
            rollback=request.rollback,
            requested_by=request.requested_by[:200],
            created_at=utcnow(),
            seconds=seconds,
        )
        session.add(row)
        if not error:
            self._point_route(session, row)
        emit(
            topics.DEPLOYMENT_COMPLETED,
            events_pb2.DeploymentCompleted(
                deployment_id=row.id,
                model_version_id=row.model_version_id,
                ok=not error,
                error=error,
                triton_model=row.triton_model,
                lora_name=row.lora_name,
            ),
            aggregate_id=f"{row.tenant}/{row.use_case}/{row.stage}",
        )
        metrics.DEPLOYMENTS.labels(row.kind, "failed" if error else "live").inc()
        if not error:
            metrics.DEPLOY_SECONDS.labels(row.kind).observe(seconds)
            log.info(
                "deployment %s live in %.1fs: %s/%s -> %s %s",
                row.id,
                seconds,
                row.tenant,
                names.route_name(row.use_case, row.stage),
                row.triton_model,
                row.lora_name or "(base)",
            )
        session.flush()
        # Requests may have cached the old route: drop it once the new one is committed.
        sa.event.listen(session, "after_commit", lambda _: self.on_route_change(), once=True)
        return row

    def _check(self, request: events_pb2.DeploymentRequested, kind: str) -> None:
        problems = []
        if not kind:
            problems.append(f"kind {request.kind} is not adapter, merged or full")
        if not request.tenant:
            problems.append("tenant is empty")
        if not names.USE_CASE.fullmatch(request.use_case):
            problems.append(f"use_case {request.use_case!r} is not a valid use case")
        if request.stage not in names.STAGES:
            problems.append(f"stage {request.stage!r} is not served (only {names.STAGES})")
        if not request.model_version_id:
            problems.append("model_version_id is empty")
        if not request.artifacts:
            problems.append("no artifacts")
        if kind == "adapter" and not request.base_model_weights.uri:
            problems.append("an adapter needs base_model_weights (the base's folder manifest)")
        if problems:
            raise DeploymentRefused("; ".join(problems))

    def _wait_for_triton(self) -> None:
        deadline = time.monotonic() + self.options.triton_wait_s
        while True:
            try:
                if self.triton.client.is_server_live(client_timeout=5):
                    return
            except Exception:  # noqa: BLE001 - not up yet: wait
                pass
            if time.monotonic() > deadline:
                raise DeploymentRefused(
                    f"Triton at {self.triton.url} did not answer for "
                    f"{self.options.triton_wait_s:.0f} s"
                )
            time.sleep(1.0)

    def _make_servable(
        self, session: Session, request: events_pb2.DeploymentRequested, kind: str
    ) -> ServedTarget:
        # The primary artifact comes first (the trainer publishes it first; a report last).
        artifact = ArtifactRef.from_proto(request.artifacts[0])
        if kind == "adapter":
            base = self.ensure_base(session, request.base_model, request.base_model_weights)
            lora = names.lora_name(request.model_version_id)
            self._install(base.triton_model, lora, artifact)
            return ServedTarget(base.triton_model, lora, base.stream_model, artifact.sha256)
        folder = self._fetch(artifact, "artifacts")
        model = names.merged_model_name(request.model_version_id, artifact.sha256)
        config = self._config(Path("model"), None)
        self._ensure_model(
            model, lambda: write_merged_model(self._repo, model, folder, config=config)
        )
        stream = ""
        if self.options.streaming_models:
            stream = names.stream_model_name(model)
            twin = replace(config, decoupled=True)
            self._ensure_model(
                stream, lambda: write_merged_model(self._repo, stream, folder, config=twin)
            )
        return ServedTarget(model, "", stream, artifact.sha256)

    def ensure_base(
        self, session: Session, name: str, weights: common_pb2.ArtifactRef | ArtifactRef
    ) -> BaseModelRow:
        """The base model's folder and its multi-adapter LLM model, fetched, written and
        loaded when missing; its row (added to `session` the first time)."""
        ref = weights if isinstance(weights, ArtifactRef) else ArtifactRef.from_proto(weights)
        path = self._fetch(ref, "bases")
        model = names.llm_model_name(name or "base", ref.sha256)
        adapter_dir = self.layout.adapter_dir(model)
        adapter_dir.mkdir(parents=True, exist_ok=True)
        config = self._config(path, adapter_dir)
        self._ensure_model(model, lambda: write_llm_model(self._repo, model, config))
        stream = ""
        if self.options.streaming_models:
            stream = names.stream_model_name(model)
            twin = replace(config, decoupled=True)
            self._ensure_model(stream, lambda: write_llm_model(self._repo, stream, twin))
        row = session.get(BaseModelRow, ref.sha256)
        if row is None:
            row = BaseModelRow(
                sha256=ref.sha256,
                name=name,
                path=str(path),
                triton_model=model,
                stream_model=stream,
                created_at=utcnow(),
            )
            session.add(row)
        elif stream and row.stream_model != stream:
            row.stream_model = stream
        return row

    @property
    def _repo(self) -> Path:
        return self.layout.model_repository

    def _config(self, base: Path, adapter_dir: Path | None) -> LLMModelConfig:
        o = self.options
        return LLMModelConfig(
            base_model=base,
            adapter_dir=adapter_dir,
            adapter_cache_size=o.adapter_cache_size,
            max_batch_size=o.max_batch_size,
            default_max_tokens=o.default_max_tokens,
            max_context_tokens=o.max_context_tokens,
            dtype=o.dtype,
            device=o.device,
            torch_threads=o.torch_threads,
        )

    def _fetch(self, ref: ArtifactRef, kind: str) -> Path:
        """A folder artifact in the cache (downloaded once; appears whole or not at all)."""
        dest = self.layout.folder(kind, ref.sha256)
        if dest.is_dir():
            return dest
        try:
            return self.store.download_folder(ref, dest)
        except OSError:
            if dest.is_dir() and any(dest.iterdir()):  # another process fetched it first
                return dest
            raise

    def _ensure_model(self, model: str, write: Callable[[], object]) -> None:
        """Write and load `model` unless Triton serves it already (a model name is tied to
        its content: base and artifact sha256 are part of it)."""
        if (self._repo / model / "config.pbtxt").is_file() and self.triton.is_ready(model):
            return
        write()
        log.info("loading Triton model %s", model)
        load_model(self.triton.client, model, timeout_s=self.options.load_timeout_s)

    def _install(self, triton_model: str, lora: str, artifact: ArtifactRef) -> None:
        # Where the loaded model looks for adapters: its config as written, which another
        # gateway with another cache folder may have written first.
        written = served_parameter(self._repo, triton_model, "adapter_dir")
        adapter_dir = Path(written) if written else self.layout.adapter_dir(triton_model)
        marker = self.layout.marker(triton_model, lora)
        installed = (adapter_dir / lora).exists() and marker.is_file()
        if installed and marker.read_text().strip() == artifact.sha256:
            return  # the same adapter is live under that name: nothing to do
        folder = self._fetch(artifact, "artifacts")
        install_adapter(folder, adapter_dir, lora)
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f".{marker.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(artifact.sha256 + "\n")
        os.replace(tmp, marker)
        log.info("installed adapter %s into %s", lora, triton_model)

    def _smoke(self, target: ServedTarget) -> None:
        try:
            self.triton.generate(
                target.triton_model,
                self.options.smoke_prompt,
                target.lora_name,
                Sampling(max_tokens=1),
                timeout_s=self.options.smoke_timeout_s,
            )
        except Exception as exc:
            raise DeploymentRefused(f"the smoke request failed: {_reason(exc)}") from exc

    def _point_route(self, session: Session, row: DeploymentRow) -> None:
        route = session.scalar(
            sa.select(RouteRow)
            .where(
                RouteRow.tenant == row.tenant,
                RouteRow.use_case == row.use_case,
                RouteRow.stage == row.stage,
            )
            .with_for_update()
        )
        if route is None:
            route = RouteRow(tenant=row.tenant, use_case=row.use_case, stage=row.stage)
            session.add(route)
        elif route.deployment_id != row.id:
            previous = session.get(DeploymentRow, route.deployment_id)
            if previous is not None and previous.status == LIVE:
                previous.status = SUPERSEDED
        route.deployment_id = row.id
        route.model_version_id = row.model_version_id
        route.base_model = row.base_model
        route.triton_model = row.triton_model
        route.lora_name = row.lora_name
        route.stream_model = row.stream_model
        route.updated_at = utcnow()

    # ------------------------------------------------------------------ after a restart

    def reconcile(self, session: Session) -> list[str]:
        """Load the models that routes and running experiments point at but Triton does
        not serve (tritonserver restarted: explicit model control loads nothing by itself).
        Returns the models loaded; a model that fails to load is logged and skipped."""
        wanted: set[str] = set()
        for route in session.scalars(sa.select(RouteRow)):
            wanted.update(m for m in (route.triton_model, route.stream_model) if m)
        for experiment in session.scalars(sa.select(ExperimentRow).where(ExperimentRow.running)):
            for variant in experiment.variants:
                wanted.update(
                    m for m in (variant.get("triton_model"), variant.get("stream_model")) if m
                )
        loaded = []
        for model in sorted(wanted):
            if not (self._repo / model / "config.pbtxt").is_file() or self.triton.is_ready(model):
                continue
            try:
                load_model(self.triton.client, model, timeout_s=self.options.load_timeout_s)
                loaded.append(model)
                log.info("reconcile: reloaded Triton model %s", model)
            except Exception:  # noqa: BLE001 - keep going with the others
                log.exception("reconcile: loading %s failed", model)
        return loaded


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DeploymentRefused):
        return str(exc)
    message = getattr(exc, "message", None)
    text = message() if callable(message) else (message or str(exc))
    return f"{type(exc).__name__}: {text}"[:2000]
