"""The model under evaluation: which registered version, where its files are, and loading
it (an adapter onto its base, or a merged/full folder) with transformers + peft.

Folders come from the artifact store into a local cache keyed by their manifest sha256
(`<cache>/<kind>/<sha256>`), once per machine: download_folder makes a folder appear
whole and verified or not at all, so a killed download leaves nothing half-made.

Errors are sorted into two kinds. Infrastructure that is away (S3 unreachable, refused
credentials, the registry down) raises as it is: the event is retried. Anything about
the model itself (an artifact that is not there, a folder transformers can't load, an
unknown base model) raises ModelUnloadable: the evaluator turns it into a FAIL report,
since retrying cannot fix it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from posttrain.registry.names import VERSION_ID
from posttrain.rpc.errors import NotFound, ServiceError
from posttrain.storage import (
    ArtifactRef,
    ArtifactStore,
    BucketMissing,
    CredentialsRefused,
    EndpointUnreachable,
)
from posttrain.v1 import common_pb2, events_pb2, registry_pb2

log = logging.getLogger(__name__)

# RunEvaluation(model_version_id="base:<name>") evaluates a registered base model itself,
# named as the gateway names a base-model experiment variant (gateway.names.BASE_VARIANT_PREFIX).
BASE_PREFIX = "base:"
KIND_BASE = "base"
KIND_WORDS = {
    common_pb2.MODEL_KIND_ADAPTER: "adapter",
    common_pb2.MODEL_KIND_MERGED: "merged",
    common_pb2.MODEL_KIND_FULL: "full",
}
# Storage trouble that a retry may fix: never a verdict about the model.
TRANSIENT = (EndpointUnreachable, CredentialsRefused, BucketMissing)


def base_model_name(model_version_id: str) -> str | None:
    """The base model's name of "base:<name>", else None. A model version id wins:
    "base:v3" is version 3 of a model named "base" (so a base model named like "v3"
    can't be evaluated this way)."""
    if model_version_id.startswith(BASE_PREFIX) and not VERSION_ID.fullmatch(model_version_id):
        return model_version_id.removeprefix(BASE_PREFIX)
    return None


class ModelUnloadable(Exception):
    """The model's files are missing or can't be loaded: a FAIL report, not a retry."""


class Registry(Protocol):
    """What the evaluator asks the registry (RegistryService), as a caller it is bound to
    (the RPC caller's own key, or the service's key for events). Raises ServiceErrors:
    NotFound, PermissionDenied, Unavailable..."""

    def get_model_version(self, model_version_id: str) -> registry_pb2.ModelVersion: ...

    def get_base_model(self, name: str) -> registry_pb2.BaseModel: ...

    def list_aliases(self, tenant: str) -> Sequence[registry_pb2.Alias]: ...


@dataclass(frozen=True)
class ModelUnderTest:
    """A registered model version, as model.registered or GetModelVersion describe it."""

    id: str  # "<name>:v<N>", or "base:<name>" for a base model
    tenant: str  # the version's tenant; a base model's: the tenant that asked
    kind: str  # adapter | merged | full | base
    base_model: str
    artifacts: tuple[ArtifactRef, ...]
    chat_template_revision: str = ""
    lineage: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.id.rpartition(":v")[0] or self.id

    @property
    def is_base(self) -> bool:
        return self.kind == KIND_BASE

    @classmethod
    def from_base(cls, base: registry_pb2.BaseModel, tenant: str) -> ModelUnderTest:
        """A registered base model (GetBaseModel) as `base:<name>`, evaluated for `tenant`:
        base models are shared, so each tenant gets reports of its own."""
        if not base.weights.uri:
            raise ValueError(f"base model {base.name!r} has no weights")
        return cls(
            id=BASE_PREFIX + base.name,
            tenant=tenant,
            kind=KIND_BASE,
            base_model=base.name,
            artifacts=tuple(_refs([base.weights], "weights")),
            chat_template_revision=base.chat_template_revision,
        )

    @classmethod
    def from_registered(cls, event: events_pb2.ModelRegistered) -> ModelUnderTest:
        """ValueError naming the field when the event can't describe a model."""
        missing = [
            f
            for f, v in (
                ("model_version_id", event.model_version_id),
                ("tenant", event.tenant),
                ("artifacts", list(event.artifacts)),
            )
            if not v
        ]
        if missing:
            raise ValueError(f"model.registered lacks {', '.join(missing)}")
        return cls(
            id=event.model_version_id,
            tenant=event.tenant,
            kind=KIND_WORDS.get(event.kind, ""),
            base_model=event.base_model,
            artifacts=tuple(_refs(event.artifacts, "artifacts")),
            chat_template_revision=event.chat_template_revision,
            lineage={
                "training_job_id": event.lineage.training_job_id,
                "dataset_version": event.lineage.dataset_version,
                "base_model": event.lineage.base_model,
            },
        )

    @classmethod
    def from_version(cls, version: registry_pb2.ModelVersion) -> ModelUnderTest:
        return cls(
            id=version.id,
            tenant=version.tenant,
            kind=KIND_WORDS.get(version.kind, ""),
            base_model=version.base_model,
            artifacts=tuple(_refs(version.artifacts, "artifacts")),
            chat_template_revision=version.chat_template_revision,
            lineage={
                "training_job_id": version.lineage.training_job_id,
                "dataset_version": version.lineage.dataset_version,
                "base_model": version.lineage.base_model,
            },
        )


def _refs(messages: Sequence[common_pb2.ArtifactRef], field_name: str) -> list[ArtifactRef]:
    refs = []
    for i, message in enumerate(messages):
        try:
            refs.append(ArtifactRef.from_proto(message))
        except ValueError as exc:
            raise ValueError(f"{field_name}[{i}]: {exc}") from None
    return refs


def artifact_kind(ref: ArtifactRef) -> str:
    """The folder's kind from its published name (.../<kind>/manifest.json), or ""."""
    parts = ref.key.split("/")
    return parts[-2] if len(parts) >= 2 and parts[-1] == "manifest.json" else ""


def pick_artifact(model: ModelUnderTest, store: ArtifactStore) -> ArtifactRef:
    """The folder to load: the one of the model's kind (by its name, else its manifest's
    `kind` metadata), else the first (the trainer lists the primary artifact first)."""
    if not model.artifacts:
        raise ModelUnloadable(f"{model.id} has no artifacts")
    wanted = model.kind or "merged"
    for ref in model.artifacts:
        if artifact_kind(ref) == wanted:
            return ref
    for ref in model.artifacts:
        try:
            if store.get_manifest(ref).metadata.get("kind") == wanted:
                return ref
        except TRANSIENT:
            raise
        except Exception:  # noqa: BLE001 - a bad ref here is judged when it is loaded
            continue
    return model.artifacts[0]


@dataclass(frozen=True)
class ModelFolders:
    """Where a model's files are: its artifact, and for an adapter the base's weights."""

    artifact: ArtifactRef
    artifact_dir: Path
    base_weights: ArtifactRef | None = None
    base_dir: Path | None = None

    @property
    def adapter(self) -> str:
        """The adapter's artifact id for the report's provenance ("" when not an adapter)."""
        return self.artifact.sha256 if self.base_weights is not None else ""


@contextmanager
def _judged(model: ModelUnderTest) -> Iterator[None]:
    """Errors about the model become ModelUnloadable; infrastructure errors pass as they are."""
    try:
        yield
    except TRANSIENT:
        raise
    except ModelUnloadable:
        raise
    except ServiceError as exc:
        if isinstance(exc, NotFound):
            raise ModelUnloadable(exc.message) from exc
        raise  # the registry refused or is away: not the model's fault
    except Exception as exc:  # noqa: BLE001 - whatever transformers/peft/storage raise
        log.warning("model %s could not be loaded", model.id, exc_info=True)
        raise ModelUnloadable(f"{type(exc).__name__}: {exc}") from exc


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    folders: ModelFolders

    @property
    def adapter(self) -> str:
        return self.folders.adapter


class ModelLoader:
    """Downloads (cached by sha256) and loads model versions for evaluation."""

    def __init__(
        self, store: ArtifactStore, cache_dir: str | Path, *, device: str = "cpu", dtype: str = ""
    ) -> None:
        self.store = store
        self.cache_dir = Path(cache_dir)
        self.device = device
        self.dtype = dtype

    def folder(self, ref: ArtifactRef, kind: str) -> Path:
        """The verified local copy of a folder artifact, downloaded once."""
        dest = self.cache_dir / kind / ref.sha256
        if dest.is_dir() and any(dest.iterdir()):
            return dest
        try:
            return self.store.download_folder(ref, dest)
        except FileExistsError:
            if dest.is_dir() and any(dest.iterdir()):  # another evaluation downloaded it
                return dest
            raise

    def fetch(self, model: ModelUnderTest, registry: Registry) -> ModelFolders:
        """The model's folders in the cache, downloaded when missing; ModelUnloadable when
        they can't be had (no artifact, an adapter without a base, an unknown base)."""
        with _judged(model):
            weights = None
            if model.is_base:  # the same cache as the bases adapters load onto
                artifact = model.artifacts[0]
                artifact_dir = self.folder(artifact, "base-models")
            else:
                artifact = pick_artifact(model, self.store)
                artifact_dir = self.folder(artifact, "models")
            if not model.is_base and (artifact_dir / "adapter_config.json").is_file():
                weights = self._base_weights(model, registry)
            base_dir = self.folder(weights, "base-models") if weights else None
            return ModelFolders(artifact, artifact_dir, weights, base_dir)

    def load(self, model: ModelUnderTest, registry: Registry) -> LoadedModel:
        """The model ready to generate; ModelUnloadable when its files can't make a model."""
        folders = self.fetch(model, registry)
        with _judged(model):
            net, tokenizer = self._from_folders(folders.artifact_dir, folders.base_dir)
        return LoadedModel(net, tokenizer, folders)

    def _base_weights(self, model: ModelUnderTest, registry: Registry) -> ArtifactRef:
        if not model.base_model:
            raise ModelUnloadable(f"{model.id} is an adapter but names no base model")
        base = registry.get_base_model(model.base_model)
        try:
            return ArtifactRef.from_proto(base.weights)
        except ValueError as exc:
            raise ModelUnloadable(
                f"base model {model.base_model!r} has no weights: {exc}"
            ) from None

    def _from_folders(self, artifact_dir: Path, base_dir: Path | None) -> tuple[Any, Any]:
        import torch
        from transformers.utils import logging as hf_logging

        from posttrain.training.inference import load_trained_model

        hf_logging.disable_progress_bar()  # a service log is no terminal
        dtype = getattr(torch, self.dtype) if self.dtype else torch.float32
        return load_trained_model(artifact_dir, base_dir, dtype=dtype, device=self.device)
