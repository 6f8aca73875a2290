"""Builders for registry tests: a migrated database, base models without S3, events as
the trainer and the evaluator would send them, and an emit that records what the core
announced. Shared by tests/libs/registry and tests/services/registry."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import Message
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from posttrain.db import apply_migrations, session_scope
from posttrain.events import EVENTS_MIGRATIONS, add_to_outbox
from posttrain.registry import REGISTRY_MIGRATIONS, aliases, base_models, gate, versions
from posttrain.registry.base_models import BaseModelFolder
from posttrain.storage import MANIFEST_MEDIA_TYPE, ArtifactRef
from posttrain.v1 import common_pb2, events_pb2

BASE = "tiny-llama"


def migrate(engine: Engine) -> Engine:
    apply_migrations(engine, "events", EVENTS_MIGRATIONS)
    apply_migrations(engine, "registry", REGISTRY_MIGRATIONS)
    return engine


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def uid() -> str:
    return uuid.uuid4().hex[:10]


def folder(seed: str = "weights-1") -> BaseModelFolder:
    """What inspect_folder would say about a folder, without S3."""
    return BaseModelFolder(
        weights=ArtifactRef(
            f"s3://models/base-models/{seed}/manifest.json", sha(seed), 321, MANIFEST_MEDIA_TYPE
        ),
        architecture="LlamaForCausalLM",
        parameters=1234,
        total_size_bytes=4096,
        config={"architectures": ["LlamaForCausalLM"]},
    )


def add_base(session: Session, name: str = BASE, seed: str = "weights-1") -> str:
    base_models.register(session, name=name, folder=folder(seed), actor="setup")
    return sha(seed)


def completed(
    *,
    job_id: str | None = None,
    name: str | None = None,
    base: str = BASE,
    dataset_version: str = "",
    tenant: str = "acme",
    kind: int = common_pb2.MODEL_KIND_ADAPTER,
    method: int = common_pb2.TUNING_METHOD_LORA,
) -> events_pb2.TrainingCompleted:
    """A training.completed as the trainer sends it."""
    job_id = job_id or f"job-{uid()}"
    return events_pb2.TrainingCompleted(
        job_id=job_id,
        output_name=name or f"bot-{uid()}",
        base_model=base,
        method=method,
        kind=kind,
        artifacts=[
            common_pb2.ArtifactRef(
                uri=f"s3://models/adapters/{job_id}/manifest.json",
                sha256=sha(job_id),
                size_bytes=512,
                media_type=MANIFEST_MEDIA_TYPE,
            )
        ],
        metrics={"train_loss": 1.25},
        lineage=common_pb2.Lineage(
            dataset_version=dataset_version or sha(f"data-{uid()}"),
            code_version="abc123",
            seed=7,
            extra={"dataset": "support-chats"},
        ),
        tenant=tenant,
        chat_template_revision="chatml-v1",
        config_yaml="method: lora\nr: 8\n",
    )


def verdict(
    version_id: str, passed: bool, *, suite: str = "release", reasons: tuple[str, ...] = ()
) -> events_pb2.EvaluationCompleted:
    return events_pb2.EvaluationCompleted(
        report_id=f"rep-{uid()}",
        model_version_id=version_id,
        suite=suite,
        suite_version="1",
        verdict=common_pb2.GATE_VERDICT_PASS if passed else common_pb2.GATE_VERDICT_FAIL,
        reasons=list(reasons),
        metrics={"win_rate": 0.61},
    )


@dataclass
class Recorder:
    """An emit that keeps (event_type, payload, aggregate_id) in memory."""

    events: list[tuple[str, Message, str]] = field(default_factory=list)

    def __call__(self, event_type: str, payload: Message, *, aggregate_id: str) -> None:
        self.events.append((event_type, payload, aggregate_id))

    def of(self, event_type: str) -> list[Message]:
        return [p for t, p, _ in self.events if t == event_type]


def outbox_emit(session: Session):
    def emit(event_type: str, payload: Message, *, aggregate_id: str):
        return add_to_outbox(
            session, event_type, payload, producer="registry", aggregate_id=aggregate_id
        )

    return emit


def seed_version(engine: Engine, *, passed: bool | None = None, tenant: str = "acme", **kw) -> str:
    """Register a version (base model too, if missing) and optionally a verdict; its id."""
    with session_scope(engine) as session:
        if session.get(base_models.BaseModelRow, kw.get("base", BASE)) is None:
            add_base(session, kw.get("base", BASE))
        row, _ = versions.register_from_training(
            session, completed(tenant=tenant, **kw), produced_by="trainer", emit=Recorder()
        )
        if passed is not None:
            gate.record_evaluation(session, verdict(row.id, passed), actor="evaluator")
        return row.id


def promote(engine: Engine, version_id: str, *, use_case: str, stage: str = "production", **kw):
    with session_scope(engine) as session:
        return aliases.promote(
            session,
            version_id=version_id,
            tenant=kw.pop("tenant", "acme"),
            use_case=use_case,
            stage=stage,
            actor=kw.pop("actor", "ops"),
            emit=kw.pop("emit", None) or outbox_emit(session),
            **kw,
        )


# ------------------------------------------------------------------ S3


def write_hf_folder(path: Path, *, hidden: int = 4, vocab: int = 8) -> Path:
    """A tiny Hugging Face model folder: config, a safetensors file with two tensors
    (2 * vocab * hidden parameters), a tokenizer."""
    path.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden}
    (path / "config.json").write_text(json.dumps(config))
    (path / "tokenizer.json").write_text('{"version": "1.0"}')
    tensors = {"model.embed_tokens.weight": [vocab, hidden], "lm_head.weight": [vocab, hidden]}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors.items():
        size = 4 * shape[0] * shape[1]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    (path / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(offset))
    return path
