"""SFT engine: tuning methods, the training loop, checkpoints, reports, base models.

Pure library (no gRPC, Kafka or S3): the trainer service calls `run_training` with a
job config, chat rows, a CheckpointStore and callbacks. Where things are: config
(TrainingJobConfig), methods/ (one registered MethodSpec per tuning method), engine (the
loop, run_training), batching (sampler order, padding, packing), checkpoint (the store
interface and the checkpoint folder), report (report JSON + loss curve), models (base
model folders: load, export SmolLM2, tiny random models), inference (greedy replies via
the chat template), distributed (torchrun ranks, FSDP2, sharded checkpoints, the launcher).
Chat templating itself is posttrain.data.chat_template.
"""

from posttrain.training.checkpoint import CheckpointStore, LocalCheckpointStore, TrainingState
from posttrain.training.config import TrainingJobConfig
from posttrain.training.engine import (
    ProgressEvent,
    TrainingResult,
    evaluate_loss,
    read_chat_rows,
    run_training,
)
from posttrain.training.inference import Reply, generate_reply, load_trained_model
from posttrain.training.methods import METHODS, MethodSpec, Runtime, get_method
from posttrain.training.models import (
    export_smollm2_instruct,
    load_base_model,
    load_tokenizer,
    make_tiny_model,
)
from posttrain.training.report import Lineage, code_version, hash_model_dir

__all__ = [
    "METHODS",
    "CheckpointStore",
    "Lineage",
    "LocalCheckpointStore",
    "MethodSpec",
    "ProgressEvent",
    "Reply",
    "Runtime",
    "TrainingJobConfig",
    "TrainingResult",
    "TrainingState",
    "code_version",
    "evaluate_loss",
    "export_smollm2_instruct",
    "generate_reply",
    "get_method",
    "hash_model_dir",
    "load_base_model",
    "load_tokenizer",
    "load_trained_model",
    "make_tiny_model",
    "read_chat_rows",
    "run_training",
]
