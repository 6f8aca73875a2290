"""Names and ids of the registry: what a valid model name, use case or tenant looks like,
model version ids ("<name>:v<N>"), alias keys, lineage node ids, and the lower-case
words stored for the protobuf enums (stage, kind, method, verdict).
"""

from __future__ import annotations

import re

from posttrain.rpc.errors import InvalidArgument
from posttrain.v1 import common_pb2

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Hugging Face style: "Llama-3.2-1B" or "meta-llama/Llama-3.2-1B".
BASE_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9][A-Za-z0-9._-]{0,99})?")
USE_CASE = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")
TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
VERSION_ID = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,99}):v(?P<version>[1-9][0-9]{0,8})")

STAGES = ("candidate", "staging", "production")
# Stages the serving layer loads: promotion to these emits deployment.requested.
DEPLOYED_STAGES = frozenset({"staging", "production"})


def check(pattern: re.Pattern[str], value: str, field: str, what: str) -> str:
    """`value` if it matches `pattern`; InvalidArgument naming `field` otherwise."""
    if not value:
        raise InvalidArgument(field, f"{what} is required")
    if not pattern.fullmatch(value):
        raise InvalidArgument(
            field, f"{value!r} is not a valid {what} (allowed: {pattern.pattern})"
        )
    return value


def check_stage(stage: str, field: str = "stage") -> str:
    if stage not in STAGES:
        raise InvalidArgument(field, f"must be one of {', '.join(STAGES)} (got {stage or 'none'})")
    return stage


def version_id(name: str, version: int) -> str:
    return f"{name}:v{version}"


def check_version_id(value: str, field: str = "model_version_id") -> str:
    if not value:
        raise InvalidArgument(field, "a model version id ('<name>:v<N>') is required")
    if not VERSION_ID.fullmatch(value):
        raise InvalidArgument(field, f"{value!r} is not a model version id ('<name>:v<N>')")
    return value


def alias_key(tenant: str, use_case: str, stage: str) -> str:
    """How an alias is named in node ids, audit subjects and event keys."""
    return f"{tenant}/{use_case}/{stage}"


# ------------------------------------------------------------------ lineage node ids

DATASET_VERSION = "dataset_version"
BASE_MODEL = "base_model"
TRAINING_JOB = "training_job"
MODEL_VERSION = "model_version"
EVALUATION = "evaluation"
DEPLOYMENT = "deployment"
ALIAS = "alias"
NODE_KINDS = (
    DATASET_VERSION,
    BASE_MODEL,
    TRAINING_JOB,
    MODEL_VERSION,
    EVALUATION,
    DEPLOYMENT,
    ALIAS,
)


def node_id(kind: str, key: str) -> str:
    return f"{kind}:{key}"


def split_node_id(value: str, field: str = "node_id") -> tuple[str, str]:
    kind, sep, key = value.partition(":")
    if not sep or not key or kind not in NODE_KINDS:
        raise InvalidArgument(
            field,
            f"{value!r} is not a lineage node id: '<kind>:<id>' with kind one of "
            f"{', '.join(NODE_KINDS)}",
        )
    return kind, key


# ------------------------------------------------------------------ enums as words


def _word(enum, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower()


def kind_word(kind: int) -> str:
    return _word(common_pb2.ModelKind, kind, "MODEL_KIND_")


def kind_value(word: str) -> int:
    return common_pb2.ModelKind.Value("MODEL_KIND_" + word.upper())


def method_word(method: int) -> str:
    return _word(common_pb2.TuningMethod, method, "TUNING_METHOD_")


def method_value(word: str) -> int:
    return common_pb2.TuningMethod.Value("TUNING_METHOD_" + word.upper())


def verdict_word(verdict: int) -> str:
    return _word(common_pb2.GateVerdict, verdict, "GATE_VERDICT_")


def verdict_value(word: str) -> int:
    return common_pb2.GateVerdict.Value("GATE_VERDICT_" + (word or "unspecified").upper())
