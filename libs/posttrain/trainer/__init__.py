"""Training jobs: the library core of services/trainer. Jobs and their states in the
database (JobBook over training_jobs / training_job_progress), the job config a
SubmitJob asks for (build_job_config), checkpoints in the artifact store
(S3CheckpointStore), and the worker that claims, trains, resumes and records jobs
(TrainingWorker; training.requested only wakes it). No gRPC here; the only Kafka it sees
is the ReceivedEvent/HandlerContext pair of posttrain.events.
"""

from posttrain.trainer.checkpoints import S3CheckpointStore, checkpoint_prefix
from posttrain.trainer.job_config import build_job_config, job_resources
from posttrain.trainer.jobs import (
    CANCELLED,
    FAILED,
    METHOD_TO_PROTO,
    PROTO_TO_METHOD,
    QUEUED,
    RUNNING,
    STATES,
    SUCCEEDED,
    TERMINAL,
    Claim,
    Completion,
    Emit,
    JobBook,
    JobRequest,
    LostOwnership,
    artifact_refs,
    new_job_id,
)
from posttrain.trainer.tables import TRAINER_MIGRATIONS, JobProgressRow, TrainingJobRow
from posttrain.trainer.worker import FolderCache, TrainingWorker, WorkerOptions

__all__ = [
    "CANCELLED",
    "FAILED",
    "METHOD_TO_PROTO",
    "PROTO_TO_METHOD",
    "QUEUED",
    "RUNNING",
    "STATES",
    "SUCCEEDED",
    "TERMINAL",
    "TRAINER_MIGRATIONS",
    "Claim",
    "Completion",
    "Emit",
    "FolderCache",
    "JobBook",
    "JobProgressRow",
    "JobRequest",
    "LostOwnership",
    "S3CheckpointStore",
    "TrainingJobRow",
    "TrainingWorker",
    "WorkerOptions",
    "artifact_refs",
    "build_job_config",
    "checkpoint_prefix",
    "job_resources",
    "new_job_id",
]
