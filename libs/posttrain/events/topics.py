"""Every Kafka topic and event type of posttrain, in one place.

One topic per event type, named like the event (`dataset.approved`). Each type maps to
its protobuf payload in proto/posttrain/v1/events.proto. Dead letters of a topic go to
`<topic>.dlq`.
"""

from __future__ import annotations

from google.protobuf.message import Message

from posttrain.v1 import events_pb2 as ev

DATA_APPROVED = "data.approved"  # public, from upstream systems (JSON or protobuf)
DATASET_REGISTERED = "dataset.registered"
DATASET_APPROVED = "dataset.approved"
DATASET_REJECTED = "dataset.rejected"
TRAINING_REQUESTED = "training.requested"
TRAINING_PROGRESS = "training.progress"
TRAINING_COMPLETED = "training.completed"
TRAINING_FAILED = "training.failed"
TRAINING_CANCELLED = "training.cancelled"
MODEL_REGISTERED = "model.registered"
EVALUATION_COMPLETED = "evaluation.completed"
DEPLOYMENT_REQUESTED = "deployment.requested"
DEPLOYMENT_COMPLETED = "deployment.completed"
INFERENCE_LOGGED = "inference.logged"
FEEDBACK_RECORDED = "feedback.recorded"

PAYLOAD_TYPES: dict[str, type[Message]] = {
    DATA_APPROVED: ev.DataApproved,
    DATASET_REGISTERED: ev.DatasetRegistered,
    DATASET_APPROVED: ev.DatasetApproved,
    DATASET_REJECTED: ev.DatasetRejected,
    TRAINING_REQUESTED: ev.TrainingRequested,
    TRAINING_PROGRESS: ev.TrainingProgress,
    TRAINING_COMPLETED: ev.TrainingCompleted,
    TRAINING_FAILED: ev.TrainingFailed,
    TRAINING_CANCELLED: ev.TrainingCancelled,
    MODEL_REGISTERED: ev.ModelRegistered,
    EVALUATION_COMPLETED: ev.EvaluationCompleted,
    DEPLOYMENT_REQUESTED: ev.DeploymentRequested,
    DEPLOYMENT_COMPLETED: ev.DeploymentCompleted,
    INFERENCE_LOGGED: ev.InferenceLogged,
    FEEDBACK_RECORDED: ev.FeedbackRecorded,
}

EVENT_TOPICS: tuple[str, ...] = tuple(PAYLOAD_TYPES)
DLQ_SUFFIX = ".dlq"


def dlq_topic(topic: str) -> str:
    return topic + DLQ_SUFFIX


def all_topics(with_dlq: bool = True) -> list[str]:
    topics = list(EVENT_TOPICS)
    if with_dlq:
        topics += [dlq_topic(t) for t in EVENT_TOPICS]
    return topics


def payload_type(event_type: str) -> type[Message]:
    try:
        return PAYLOAD_TYPES[event_type]
    except KeyError:
        raise ValueError(
            f"unknown event type {event_type!r}; known: {sorted(PAYLOAD_TYPES)}"
        ) from None
