"""Builders shared by the trainer tests: chat rows, stand-ins for intake and the registry,
and small waiting and reading helpers."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import sqlalchemy as sa
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import Engine

from posttrain.events import decode, unpack
from posttrain.events.tables import OutboxEvent
from posttrain.rpc.errors import NotFound
from posttrain.v1 import common_pb2, intake_pb2, registry_pb2

WORDS = (
    "red green blue amber river stone cloud maple cedar falcon otter harbor lantern "
    "meadow copper silver violet ember frost canyon"
).split()

BASE_MODEL = "tiny-llama"
# A few fast LoRA steps: 6 steps of 4 rows, checkpoints every 2.
FAST = {
    "max_steps": "6",
    "batch_size": "4",
    "lr": "5e-3",
    "rank": "4",
    "alpha": "8",
    "checkpoint_every": "2",
    "seed": "7",
}

# 64-hex dataset versions of the stand-in intake.
APPROVED_VERSION = "a" * 64
PENDING_VERSION = "b" * 64
REJECTED_VERSION = "c" * 64


def chat_rows(count: int, seed: int) -> list[dict]:
    """Reverse-the-words chats, some with a system prompt; distinct lengths, so that the
    tokens of a step tell which rows it trained on."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        words = rng.sample(WORDS, 2 + i % 4)
        messages = []
        if i % 3 == 0:
            messages.append({"role": "system", "content": "Answer with the words only."})
        messages += [
            {"role": "user", "content": "Reverse: " + " ".join(words)},
            {"role": "assistant", "content": " ".join(reversed(words))},
        ]
        rows.append({"messages": messages})
    return rows


def jsonl(rows: Iterable[dict]) -> bytes:
    return b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in rows)


@dataclass
class FakeIntake:
    """DatasetLookup over a dict; remembers the credentials it was called with."""

    versions: dict[tuple[str, str], intake_pb2.DatasetVersion] = field(default_factory=dict)
    calls: list[tuple[str, str, tuple]] = field(default_factory=list)

    def get_version(self, dataset, version, credentials):
        self.calls.append((dataset, version, tuple(credentials)))
        try:
            return self.versions[(dataset, version)]
        except KeyError:
            raise NotFound("dataset version", f"{dataset}@{version}") from None


@dataclass
class FakeRegistry:
    """BaseModelLookup over a dict."""

    models: dict[str, registry_pb2.BaseModel] = field(default_factory=dict)
    calls: list[tuple[str, tuple]] = field(default_factory=list)

    def get_base_model(self, name, credentials):
        self.calls.append((name, tuple(credentials)))
        try:
            return self.models[name]
        except KeyError:
            raise NotFound("base model", name) from None


def dataset_version(
    dataset: str, version: str, state: int, manifest: common_pb2.ArtifactRef
) -> intake_pb2.DatasetVersion:
    return intake_pb2.DatasetVersion(
        dataset=dataset, version=version, state=state, manifest=manifest
    )


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 90.0, every_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def outbox(engine: Engine, topic: str | None = None) -> list[tuple[str, Any]]:
    """(topic, payload) of every event staged in the trainer's outbox, oldest first."""
    with engine.connect() as conn:
        query = sa.select(OutboxEvent.topic, OutboxEvent.value).order_by(OutboxEvent.id)
        if topic:
            query = query.where(OutboxEvent.topic == topic)
        return [(t, unpack(decode(v))) for t, v in conn.execute(query)]


def read_topic(
    bootstrap: str, topic: str, key: str, until: Callable[[list], bool], timeout_s: float = 60.0
) -> list:
    """Payloads of `topic` with Kafka key `key`, from the beginning, until `until(found)`."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        consumer.seek_to_beginning()
        found: list = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if record.key == key.encode():
                        found.append(unpack(decode(record.value)))
            if until(found):
                return found
        raise AssertionError(f"{topic}: only {len(found)} events for {key} after {timeout_s}s")
    finally:
        consumer.close()


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    try:
        call()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded but an error was expected")


def chat_row_bytes(count: int, seed: int) -> bytes:
    return jsonl(chat_rows(count, seed))
