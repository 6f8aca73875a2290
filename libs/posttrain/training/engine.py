"""The SFT loop: config + chat rows + a base model folder -> artifacts, metrics, a report.

Owns one training run from tokenization to the saved artifact: AdamW with warmup +
cosine decay, gradient accumulation (the loss is the mean over every label token of the
optimizer step, so batch 4 x accum 1 == batch 2 x accum 2), gradient clipping, bf16
autocast on GPU / fp32 on CPU, optional gradient checkpointing, dynamic padding or
packing, periodic eval loss, periodic checkpoints through a CheckpointStore and exact
resume (weights, optimizer, scheduler, RNG, data position), a progress callback and a
cancel hook checked at every step boundary.

It knows nothing of gRPC, Kafka or S3: the trainer service passes callables and a store.
Methods are looked up in posttrain.training.methods; nothing here is method-specific.
Under torchrun the same loop runs on every rank; what differs (the rank's share of each
batch, sums across ranks, FSDP2, sharded checkpoints) goes through a `Ranks` from
posttrain.training.distributed, which is the identity for one plain process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import math
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from posttrain.data.chat_template import IGNORE_INDEX, EncodedChat, encode_rows
from posttrain.training.batching import collate, count_tokens, epoch_order, plan_epoch
from posttrain.training.checkpoint import (
    CHECKPOINT_FORMAT,
    SHARDED_CHECKPOINT_FORMAT,
    CheckpointStore,
    LocalCheckpointStore,
    TrainingState,
    read_checkpoint,
    read_state,
    write_checkpoint,
)
from posttrain.training.config import TrainingJobConfig
from posttrain.training.distributed import (
    Ranks,
    check_supported,
    fetched_from_store,
    process_group,
    read_sharded_checkpoint,
    save_artifact,
    save_to_store,
    shard_model,
)
from posttrain.training.losses import linear_cross_entropy_sum, output_head
from posttrain.training.methods import MethodSpec, Runtime, get_method
from posttrain.training.methods.base import copy_tokenizer_files
from posttrain.training.models import load_tokenizer
from posttrain.training.report import Lineage, write_training_report
from posttrain.training.resources import PeakMemory

Rows = Iterable[Mapping[str, Any]] | str | Path
Status = Literal["completed", "cancelled"]


@dataclass(frozen=True)
class ProgressEvent:
    """Sent after every optimizer step (fields match posttrain.v1.JobProgress)."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    learning_rate: float
    grad_norm: float
    tokens_per_second: float
    eta_seconds: float
    eval_loss: float | None  # the latest eval loss, None before the first eval


@dataclass
class TrainingResult:
    status: Status
    artifact_dir: Path | None  # the primary artifact: merged if asked for, else adapter/full
    artifact_kind: Literal["adapter", "merged", "full"] | None
    artifacts: dict[str, Path]  # every artifact written, by kind
    report_path: Path
    metrics: dict[str, float]
    trainable_params: int
    total_params: int
    steps: int  # optimizer steps completed (including before a resume)
    total_steps: int
    tokens: int  # training tokens processed, padding excluded
    wall_time_s: float  # training loop time, all attempts
    peak_memory_bytes: int  # this attempt: CUDA allocator peak, or sampled RSS on CPU
    peak_memory_kind: str
    data: dict[str, Any]  # EncodeStats of the train and eval rows
    history: list[dict[str, Any]] = field(default_factory=list)
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: str | None = None  # id of the last checkpoint saved
    resumed_from_step: int | None = None


def read_chat_rows(path: str | Path) -> list[dict[str, Any]]:
    """Normalised chat rows from a JSONL file (blank lines skipped)."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def resolve_runtime(config: TrainingJobConfig) -> Runtime:
    if config.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {config.device!r} asked for, but CUDA is not available here")
    if config.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, config.dtype)
    return Runtime(device=device, compute_dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr for 0-based `step`: linear warmup that never uses lr 0
    ((step+1)/(warmup+1)), then cosine from 1 down towards min_lr_ratio."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over label positions, computed in fp32. Logits
    may carry extra leading positions (prompt tuning prepends virtual tokens): the last
    labels.shape[1] positions line up with the labels. The labels are shifted, not the
    logits, so the (large) logits are never copied."""
    logits = logits[:, -labels.shape[1] :, :]
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).to(logits.device)
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def _autocast(runtime: Runtime) -> contextlib.AbstractContextManager[Any]:
    if runtime.compute_dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=runtime.device.type, dtype=runtime.compute_dtype)


# Loss straight from the hidden states (posttrain.training.losses) when the model allows
# it; False forces the full-logits route (benchmarks measure the difference with it).
CHUNKED_LOSS = True


def _forward_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], runtime: Runtime
) -> torch.Tensor:
    inputs = {k: v.to(runtime.device) for k, v in batch.items() if k != "labels"}
    head = output_head(model) if CHUNKED_LOSS else None
    with _autocast(runtime):
        if head is None:
            logits = model(**inputs, use_cache=False).logits
            return token_loss_sum(logits, batch["labels"])
        decoder, lm_head = head
        hidden = decoder(**inputs, use_cache=False).last_hidden_state
    return linear_cross_entropy_sum(
        hidden, lm_head.weight, batch["labels"], compute_dtype=runtime.compute_dtype
    )


def kernels_enabled(config: TrainingJobConfig, runtime: Runtime, ranks: Ranks) -> bool:
    """fused_kernels resolved: 'auto' is on for one CUDA process with triton installed and
    no compile_layers (FSDP's sharded parameters are not what the LoRA kernel expects, and
    torch.compile 2.11 failed to trace the kernels on an H200: benchmarks/results/)."""
    from posttrain.training.kernels import triton_available

    if config.fused_kernels == "off":
        return False
    if config.fused_kernels == "on":
        if ranks.distributed or config.compile_layers:
            raise ValueError(
                "fused_kernels='on' is not supported under torchrun (FSDP) or with compile_layers"
            )
        return True  # on CPU (or without triton) each kernel runs its PyTorch fallback
    on_gpu = runtime.device.type == "cuda" and triton_available()
    return on_gpu and not ranks.distributed and not config.compile_layers


def _speed_up(
    model: torch.nn.Module, config: TrainingJobConfig, runtime: Runtime, ranks: Ranks
) -> dict[str, int]:
    """Fused kernels and torch.compile of the decoder layers, as the config says; returns
    how many modules each kernel patched (empty when off)."""
    counts: dict[str, int] = {}
    if kernels_enabled(config, runtime, ranks):
        from posttrain.training.kernels import patch_model

        counts = patch_model(model)
    if config.compile_layers:
        for module in model.modules():
            if type(module).__name__.endswith("DecoderLayer"):
                module.compile()
    return counts


def evaluate_loss(
    model: torch.nn.Module,
    rows: list[EncodedChat],
    *,
    batch_size: int,
    pad_id: int,
    runtime: Runtime,
    ranks: Ranks | None = None,
) -> float:
    """Mean token cross-entropy over the assistant tokens of `rows` (eval mode, no grad).
    With several ranks each evaluates its turns of the batches and the sums are added."""
    ranks = ranks or Ranks()
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    starts = list(range(0, len(rows), batch_size))
    with torch.no_grad():
        for start in ranks.take_turns(starts):
            # None: this rank has no batch left, but must still take part in FSDP's gathers.
            first = starts[0] if start is None else start
            micro = [[i] for i in range(first, min(first + batch_size, len(rows)))]
            batch = collate(rows, micro, pad_id, packed=False)
            loss = _forward_loss(model, batch, runtime).item()
            if start is not None:
                total += loss
                count += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    model.train(was_training)  # transformers skips gradient checkpointing in eval mode
    total, count = ranks.sum(total, count)
    return total / max(count, 1)


def _data_fingerprint(rows: list[EncodedChat]) -> str:
    digest = hashlib.sha256(b"posttrain.sft.data.v1\n")
    for row in rows:
        digest.update(np.asarray(row.input_ids, dtype=np.int64).tobytes())
        digest.update(np.asarray(row.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def _count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total); PEFT's count also unpacks 4-bit weights (2 params a byte)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class _Plans:
    """Epoch plans, computed on demand from (seed, epoch) and cached."""

    def __init__(self, config: TrainingJobConfig, lengths: list[int], world_size: int = 1) -> None:
        self.config = config
        self.lengths = lengths
        self.world_size = world_size  # a global micro-batch is batch_size rows from each rank
        self._cache: dict[int, tuple[list[int], list[Any]]] = {}

    def get(self, epoch: int) -> tuple[list[int], list[Any]]:
        if epoch not in self._cache:
            c = self.config
            order = epoch_order(len(self.lengths), c.seed, epoch)
            plan = plan_epoch(
                order,
                self.lengths,
                batch_size=c.batch_size * self.world_size,
                grad_accum=c.grad_accum,
                packing=c.packing,
                max_seq_len=c.max_seq_len,
            )
            self._cache = {epoch: (order, plan)}  # one epoch at a time is enough
        return self._cache[epoch]

    def total_steps(self) -> int:
        if self.config.max_steps is not None:
            return self.config.max_steps
        return sum(len(self.get(e)[1]) for e in range(self.config.epochs))


def _rows(source: Rows | None) -> list[Mapping[str, Any]]:
    if source is None:
        return []
    if isinstance(source, str | Path):
        return read_chat_rows(source)
    return list(source)


def run_training(
    config: TrainingJobConfig,
    train_rows: Rows,
    eval_rows: Rows | None,
    output_dir: str | Path,
    checkpoint_store: CheckpointStore | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    lineage: Lineage | None = None,
    checkpoint_staging: str | Path | None = None,
) -> TrainingResult:
    """Train `config.method` on `config.base_model`; resume from the store's latest
    checkpoint when there is one (same config and data required).

    Rows are normalised chat rows (dicts) or a JSONL path. Writes into output_dir:
    adapter/ or model/ (the method's artifact), merged/ (if config.merge_adapter and the
    method can merge), report/ (training_report.json, config.yaml, loss_curve.png).
    Checkpoints go to `checkpoint_store` (default: output_dir/checkpoints). When
    should_cancel() returns True at a step boundary, a checkpoint is saved and the result
    has status "cancelled" and no artifact.

    Under torchrun (or an initialised process group) every rank calls it with the same
    arguments: each trains on its share of every global batch (batch_size rows per rank),
    the model is sharded with FSDP2, checkpoints are sharded, and only rank 0 calls
    `progress`, `should_cancel` and the store and writes the artifacts and the report
    (posttrain.training.distributed)."""
    config.validate()
    runtime = resolve_runtime(config)
    with process_group(runtime.device) as ranks:
        runtime = dataclasses.replace(runtime, device=ranks.device)
        return _train(
            config, train_rows, eval_rows, Path(output_dir), checkpoint_store, progress,
            should_cancel, lineage, runtime, ranks,
            Path(checkpoint_staging) if checkpoint_staging else None,
        )  # fmt: skip


def _train(
    config: TrainingJobConfig,
    train_rows: Rows,
    eval_rows: Rows | None,
    output_dir: Path,
    checkpoint_store: CheckpointStore | None,
    progress: Callable[[ProgressEvent], None] | None,
    should_cancel: Callable[[], bool] | None,
    lineage: Lineage | None,
    runtime: Runtime,
    ranks: Ranks,
    staging: Path | None,
) -> TrainingResult:
    output_dir.mkdir(parents=True, exist_ok=True)
    store = checkpoint_store or LocalCheckpointStore(output_dir / "checkpoints")
    # Sharded checkpoints are written there by every rank: a folder all ranks see (the
    # output folder on one node; a shared volume when ranks span nodes).
    staging = staging or output_dir / "checkpoint-staging"
    spec = get_method(config.method)
    method_config = spec.parse_config(config.method_config)
    check_supported(spec, ranks)
    base = Path(config.base_model).expanduser()

    tokenizer = load_tokenizer(base)
    pad_id = int(tokenizer.pad_token_id)
    train, train_stats = encode_rows(
        _rows(train_rows), tokenizer, max_seq_len=config.max_seq_len, truncation=config.truncation
    )
    evals, eval_stats = encode_rows(
        _rows(eval_rows), tokenizer, max_seq_len=config.max_seq_len, truncation=config.truncation
    )
    if not train:
        raise ValueError(f"no training rows left after encoding: {train_stats.to_dict()}")
    data = {"train": train_stats.to_dict(), "eval": eval_stats.to_dict()}

    seed_everything(config.seed)
    with PeakMemory(runtime.device) as memory:
        model = spec.load(base, method_config, runtime)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model.config.use_cache = False
        kernels = _speed_up(model, config, runtime, ranks)
        trainable, total_params = _count_params(model)
        model = shard_model(model, runtime, ranks)
        ranks.reseed(config.seed)

        optimizer = torch.optim.AdamW(
            _param_groups(model, config.weight_decay),
            lr=config.lr,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_eps,
            # One kernel per step instead of a dozen passes; same update. Not for FSDP's
            # sharded parameters.
            fused=True if runtime.device.type == "cuda" and not ranks.distributed else None,
        )
        plans = _Plans(config, [len(r) for r in train], ranks.world_size)
        total_steps = plans.total_steps()
        warmup = config.warmup_steps or int(config.warmup_ratio * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, total_steps, warmup, config.min_lr_ratio)
        )

        state = TrainingState(
            config_fingerprint=config.fingerprint_dict(),
            data_fingerprint=_data_fingerprint(train),
            format=SHARDED_CHECKPOINT_FORMAT if ranks.distributed else CHECKPOINT_FORMAT,
            world_size=ranks.world_size,
        )
        latest = store.latest_step() if ranks.is_main else None
        resumed_from = ranks.from_main(-1 if latest is None else latest)
        resumed_from = None if resumed_from < 0 else resumed_from
        if resumed_from is not None:
            state = _resume(
                store, resumed_from, model, optimizer, scheduler, state, plans, ranks, staging
            )

        run = _Loop(
            config, spec, runtime, model, optimizer, scheduler, train, evals, pad_id, plans,
            state, store, total_steps, ranks=ranks, staging=staging,
        )  # fmt: skip
        status, checkpoint = run.train(progress, should_cancel)
        artifacts: dict[str, Path] = {}
        if status == "completed":
            artifacts = _save_artifacts(spec, model, base, output_dir, ranks)
        del model, optimizer, scheduler, run  # free them before merge loads another base
        gc.collect()
        if status == "completed" and config.merge_adapter and spec.merge is not None:
            merged = output_dir / "merged"
            if ranks.is_main:
                spec.merge(artifacts["adapter"], base, merged, runtime)
            ranks.barrier()
            artifacts["merged"] = merged
    peak_memory_bytes = ranks.max(memory.peak_bytes)  # the largest rank's

    history, eval_history = state.history, state.eval_history
    metrics = _metrics(history, eval_history)
    if state.elapsed_s > 0:
        metrics["tokens_per_second"] = state.tokens_seen / state.elapsed_s
    primary_kind = "merged" if "merged" in artifacts else spec.artifact_kind
    summary = {
        "status": status,
        "method": {
            "name": spec.name,
            "config": dict(vars(method_config)),
            "artifact_kind": spec.artifact_kind,
            "can_merge": spec.merge is not None,
            "cannot_merge": spec.cannot_merge,
        },
        "metrics": metrics,
        "params": {"trainable": trainable, "total": total_params},
        "steps": state.global_step,
        "total_steps": total_steps,
        "tokens": state.tokens_seen,
        "wall_time_s": state.elapsed_s,
        "peak_memory": {"bytes": peak_memory_bytes, "kind": memory.kind},
        "device": str(runtime.device),
        "processes": ranks.world_size,
        "compute_dtype": str(runtime.compute_dtype).removeprefix("torch."),
        "resumed_from_step": resumed_from,
        "kernels": kernels,
        "data": data,
        "artifacts": {k: str(v) for k, v in artifacts.items()},
    }
    report = output_dir / "report" / "training_report.json"  # written by rank 0
    if ranks.is_main:
        report = write_training_report(
            output_dir / "report",
            config_yaml=config.to_yaml(),
            config=config.to_dict(),
            lineage=lineage or Lineage(),
            summary=summary,
            history=history,
            eval_history=eval_history,
        )
    ranks.barrier()
    primary = artifacts.get(primary_kind) if artifacts else None
    return TrainingResult(
        status=status,
        artifact_dir=primary,
        artifact_kind=primary_kind if primary else None,  # type: ignore[arg-type]
        artifacts=artifacts,
        report_path=report,
        metrics=metrics,
        trainable_params=trainable,
        total_params=total_params,
        steps=state.global_step,
        total_steps=total_steps,
        tokens=state.tokens_seen,
        wall_time_s=state.elapsed_s,
        peak_memory_bytes=peak_memory_bytes,
        peak_memory_kind=memory.kind,
        data=data,
        history=history,
        eval_history=eval_history,
        checkpoint=checkpoint,
        resumed_from_step=resumed_from,
    )


def _resume(
    store: CheckpointStore,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    fresh: TrainingState,
    plans: _Plans,
    ranks: Ranks,
    staging: Path,
) -> TrainingState:
    if not ranks.distributed:
        with tempfile.TemporaryDirectory(prefix="posttrain-resume-") as tmp:
            folder = store.load(step, Path(tmp) / "checkpoint")
            _check_resumable(read_state(folder), step, fresh, plans)
            return read_checkpoint(folder, model, optimizer, scheduler)
    with fetched_from_store(store, step, staging, ranks) as folder:
        state = read_state(folder)
        _check_resumable(state, step, fresh, plans)
        read_sharded_checkpoint(folder, model, optimizer, scheduler, ranks, state.global_step)
        return state


def _check_resumable(state: TrainingState, step: int, fresh: TrainingState, plans: _Plans) -> None:
    if (state.format, state.world_size) != (fresh.format, fresh.world_size):
        raise ValueError(
            f"checkpoint step {step} was written by {state.world_size} process(es) "
            f"({state.format}); this run has {fresh.world_size} ({fresh.format}): resume with "
            "the same number of processes (the global batch depends on it)"
        )
    if state.config_fingerprint != fresh.config_fingerprint:
        changed = sorted(
            k
            for k in set(state.config_fingerprint) | set(fresh.config_fingerprint)
            if state.config_fingerprint.get(k) != fresh.config_fingerprint.get(k)
        )
        raise ValueError(f"checkpoint step {step} was made with another config: {changed}")
    if state.data_fingerprint != fresh.data_fingerprint:
        raise ValueError(f"checkpoint step {step} was made from other training rows")
    order, _ = plans.get(state.epoch)
    if state.epoch_order != order:
        raise ValueError(
            f"checkpoint step {step}: the sampler order of epoch {state.epoch} differs"
        )


class _Loop:
    """The step loop over one run's objects (a class only to keep their many names)."""

    def __init__(
        self,
        config: TrainingJobConfig,
        spec: MethodSpec,
        runtime: Runtime,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LambdaLR,
        train: list[EncodedChat],
        evals: list[EncodedChat],
        pad_id: int,
        plans: _Plans,
        state: TrainingState,
        store: CheckpointStore,
        total_steps: int,
        ranks: Ranks | None = None,
        staging: Path | None = None,
    ) -> None:
        self.ranks = ranks or Ranks()
        self.staging = staging  # where every rank writes its checkpoint shard
        self.config, self.spec, self.runtime = config, spec, runtime
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_rows, self.evals, self.pad_id = train, evals, pad_id
        self.plans, self.state, self.store, self.total_steps = plans, state, store, total_steps
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.last_eval: float | None = (
            state.eval_history[-1]["eval_loss"] if state.eval_history else None
        )

    def train(
        self,
        progress: Callable[[ProgressEvent], None] | None,
        should_cancel: Callable[[], bool] | None,
    ) -> tuple[Status, str | None]:
        state, config = self.state, self.config
        self.model.train()
        if config.eval_at_start and state.global_step == 0 and not state.eval_history:
            self._evaluate()
        checkpoint: str | None = None
        saved_at = -1
        started = time.perf_counter()
        elapsed_before = state.elapsed_s
        steps_here = 0
        status: Status = "completed"
        main = self.ranks.is_main
        for step_plan in self._remaining_steps():
            cancel = main and should_cancel is not None and should_cancel()
            if self.ranks.from_main(int(cancel)):  # rank 0 decides for all
                status = "cancelled"
                break
            t0 = time.perf_counter()
            record = self._step(step_plan)
            step_time = time.perf_counter() - t0
            steps_here += 1
            state.elapsed_s = elapsed_before + (time.perf_counter() - started)
            record["tokens_per_second"] = record["tokens"] / max(step_time, 1e-9)
            state.history.append(record)
            done = state.global_step
            if self.evals and (
                (config.eval_every and done % config.eval_every == 0) or done == self.total_steps
            ):
                self._evaluate()
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                checkpoint, saved_at = self._checkpoint(), done
            if progress is not None and main:
                mean_step = (time.perf_counter() - started) / steps_here
                progress(
                    ProgressEvent(
                        step=done,
                        total_steps=self.total_steps,
                        epoch=record["epoch"],
                        loss=record["loss"],
                        learning_rate=record["lr"],
                        grad_norm=record["grad_norm"],
                        tokens_per_second=record["tokens_per_second"],
                        eta_seconds=mean_step * (self.total_steps - done),
                        eval_loss=self.last_eval,
                    )
                )
        state.elapsed_s = elapsed_before + (time.perf_counter() - started)
        if saved_at != state.global_step:  # the end, or the cancel point
            checkpoint = self._checkpoint()
        return status, checkpoint

    def _remaining_steps(self) -> Iterator[list[Any]]:
        state = self.state
        while state.global_step < self.total_steps:
            order, plan = self.plans.get(state.epoch)
            state.epoch_order = order
            if state.step_in_epoch >= len(plan):
                state.epoch += 1
                state.step_in_epoch = 0
                continue
            yield plan[state.step_in_epoch]

    def _step(self, step_plan: list[Any]) -> dict[str, Any]:
        state, runtime, ranks = self.state, self.runtime, self.ranks
        shares = ranks.split(step_plan)  # this rank's part of each micro-batch
        # An empty share still runs a forward/backward (weight 0) on the micro-batch's first
        # sequence: every rank must make the same FSDP collectives.
        batches = [
            collate(self.train_rows, share or mb[:1], self.pad_id, self.config.packing)
            for share, mb in zip(shares, step_plan, strict=True)
        ]
        label_count = sum(
            int((b["labels"][:, 1:] != IGNORE_INDEX).sum())
            for b, share in zip(batches, shares, strict=True)
            if share
        )
        tokens = sum(count_tokens(self.train_rows, share) for share in shares)
        label_count, tokens = (int(n) for n in ranks.sum(label_count, tokens))
        lr = self.scheduler.get_last_lr()[0]
        loss_total = 0.0
        for batch, share in zip(batches, shares, strict=True):
            loss_sum = _forward_loss(self.model, batch, runtime)
            if not share:
                loss_sum = loss_sum * 0.0
            # Normalise by the whole step's label tokens on every rank (FSDP sums the
            # gradients): accumulation and ranks == one big batch.
            (loss_sum / max(label_count, 1)).backward()
            loss_total += loss_sum.item()
        (loss_total,) = ranks.sum(loss_total)
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else math.inf
        grad_norm = ranks.clip_grad_norm(self.params, max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        epoch = state.epoch
        state.global_step += 1
        state.step_in_epoch += 1
        state.tokens_seen += tokens
        return {
            "step": state.global_step,
            "epoch": epoch,
            "loss": loss_total / max(label_count, 1),
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": tokens,
            "label_tokens": label_count,
        }

    def _evaluate(self) -> None:
        self.last_eval = evaluate_loss(
            self.model,
            self.evals,
            batch_size=self.config.eval_batch_size or self.config.batch_size,
            pad_id=self.pad_id,
            runtime=self.runtime,
            ranks=self.ranks,
        )
        self.state.eval_history.append(
            {"step": self.state.global_step, "eval_loss": self.last_eval}
        )

    def _checkpoint(self) -> str | None:
        if self.ranks.distributed:
            assert self.staging is not None
            return save_to_store(
                self.store, self.staging, self.model, self.optimizer, self.scheduler,
                self.state, self.ranks,
            )  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="posttrain-ckpt-") as tmp:
            folder = Path(tmp) / "checkpoint"
            write_checkpoint(folder, self.model, self.optimizer, self.scheduler, self.state)
            return self.store.save(self.state.global_step, folder)


def _save_artifacts(
    spec: MethodSpec, model: torch.nn.Module, base: Path, output_dir: Path, ranks: Ranks
) -> dict[str, Path]:
    kind = spec.artifact_kind
    dest = output_dir / ("adapter" if kind == "adapter" else "model")
    if ranks.distributed:
        save_artifact(spec, model, dest, ranks)  # gathered onto rank 0, saved there
    else:
        spec.save(model, dest)
    if ranks.is_main:
        copy_tokenizer_files(base, dest)  # serving needs the chat template next to the weights
    ranks.barrier()
    return {kind: dest}


def _metrics(history: list[dict[str, Any]], eval_history: list[dict[str, Any]]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if history:
        metrics["first_loss"] = history[0]["loss"]
        metrics["final_loss"] = history[-1]["loss"]
        tail = history[-max(1, len(history) // 10) :]
        metrics["final_loss_mean_last_10pct"] = sum(h["loss"] for h in tail) / len(tail)
    if eval_history:
        metrics["final_eval_loss"] = eval_history[-1]["eval_loss"]
        metrics["best_eval_loss"] = min(h["eval_loss"] for h in eval_history)
        metrics["initial_eval_loss"] = eval_history[0]["eval_loss"]
    return metrics
