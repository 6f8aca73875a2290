"""The SFT loop as several processes: ranks, FSDP2 sharding, sharded checkpoints, torchrun.

Owns what changes when `run_training` runs under torchrun (one process per GPU; CPU
processes over gloo in tests): which share of every global batch a rank trains on, sums
across ranks, the FSDP2 wrapping (`fully_shard` per decoder layer + the root), the sharded
checkpoint folder (torch.distributed.checkpoint), gathering the final artifact onto rank 0,
and the torchrun command line the trainer worker starts for a job that asks for N GPUs.

A plain process (no torchrun, no process group) never touches torch.distributed: `Ranks()`
(rank 0 of 1, not distributed) stands in and every hook here is the identity. Under a process
group every rank computes; only rank 0 calls the CheckpointStore, the progress callback or
writes a file other than its own checkpoint shard and RNG state.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from posttrain.training.batching import MicroBatch, StepPlan
from posttrain.training.checkpoint import (
    STATE_FILE,
    CheckpointStore,
    TrainingState,
    rng_state,
    set_rng_state,
)
from posttrain.training.config import TrainingJobConfig
from posttrain.training.methods import MethodSpec, Runtime

# Methods whose FSDP2 path is tested (tests/libs/training/test_training_distributed.py).
# prefix/prompt are refused: PEFT runs their prompt encoder on still-sharded weights.
DISTRIBUTED_METHODS = frozenset({"full", "lora", "qlora", "ia3"})
SHARDS_DIR = "sharded"  # DCP: .metadata + one __<rank>_0.distcp per rank
RNG_DIR = "rng"  # rank-00000.pt ... : every rank's own RNG state
# Rank 0 publishes checkpoints and artifacts while the others wait in a collective.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run. The default is one plain process."""

    rank: int = 0
    world_size: int = 1
    distributed: bool = False  # a process group exists: FSDP2 model, sharded checkpoints
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, *values: float) -> list[float]:
        """Element-wise sums over all ranks (float64, so token counts stay exact)."""
        if not self.distributed:
            return [float(v) for v in values]
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def max(self, value: int) -> int:
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def from_main(self, value: int) -> int:
        """Rank 0's value on every rank (decisions made on rank 0 alone: cancel, resume step)."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.broadcast(tensor, src=0)
        return int(tensor.item())

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def split(self, step_plan: StepPlan) -> list[MicroBatch]:
        """This rank's share of each global micro-batch: consecutive slices whose sizes differ
        by at most one, so the ranks together train on exactly the sequences one process
        would. A share is empty only when a micro-batch has fewer sequences than ranks."""
        if not self.distributed:
            return step_plan
        shares = []
        for micro_batch in step_plan:
            n = len(micro_batch)
            start, stop = self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size
            shares.append(micro_batch[start:stop])
        return shares

    def take_turns(self, items: Sequence[T]) -> list[T | None]:
        """Round-robin share of `items`, padded with None so every rank does the same number
        of rounds (each round is an FSDP forward, a collective)."""
        if not self.distributed:
            return list(items)
        rounds = math.ceil(len(items) / self.world_size)
        picks = (r * self.world_size + self.rank for r in range(rounds))
        return [items[i] if i < len(items) else None for i in picks]

    def reseed(self, seed: int) -> None:
        """After the model is built (identical on every rank): other ranks draw their own
        dropout masks; rank 0 keeps the single-process stream."""
        if self.rank:
            torch.manual_seed(seed + 1_000_003 * self.rank)

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float) -> float:
        """Clip on the norm of the whole (unsharded) gradient; returns that norm."""
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        full_tensor = getattr(norm, "full_tensor", None)  # a DTensor under FSDP2
        return float(full_tensor() if full_tensor is not None else norm)


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[Ranks]:
    """The ranks of this process: from an initialised default process group; else, under
    torchrun (WORLD_SIZE and MASTER_ADDR in the environment), from one initialised here
    (nccl on CUDA, gloo on CPU) and destroyed on exit; else one plain process."""
    owned = False
    if not (dist.is_available() and dist.is_initialized()):
        if not {"WORLD_SIZE", "MASTER_ADDR"} <= set(os.environ) or not dist.is_available():
            yield Ranks(device=device)
            return
        device = _local_device(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device, timeout=COLLECTIVE_TIMEOUT)
        else:
            dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
        owned = True
    try:
        yield Ranks(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            distributed=True,
            device=_local_device(device),
        )
    finally:
        if owned:
            dist.destroy_process_group()


def _local_device(device: torch.device) -> torch.device:
    """cuda -> cuda:LOCAL_RANK (one GPU per process); an explicit index is kept."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def check_supported(spec: MethodSpec, ranks: Ranks) -> None:
    """Refuse, before any model is loaded, what the distributed path cannot run."""
    if not ranks.distributed:
        return
    if spec.name not in DISTRIBUTED_METHODS:
        raise ValueError(
            f"{spec.name} is not supported with several processes (FSDP2); supported: "
            f"{sorted(DISTRIBUTED_METHODS)}. Run it as one process."
        )


def shard_model(model: torch.nn.Module, runtime: Runtime, ranks: Ranks) -> torch.nn.Module:
    """FSDP2: `fully_shard` each decoder layer, then the root (embeddings, final norm, LM
    head, PEFT's wrapper). Parameters keep their dtypes (fp32 trained weights, frozen base in
    the compute dtype) and the forward runs under the engine's autocast, as on one process.
    Gradients are summed over ranks, not averaged: the engine already divides the loss by
    the global number of label tokens."""
    if not ranks.distributed:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(runtime.device.type, (ranks.world_size,))
    _prepare_4bit_weights(model)
    for layer in _decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for module in model.modules():
        if hasattr(module, "set_gradient_divide_factor"):
            module.set_gradient_divide_factor(1.0)
            if hasattr(module, "set_force_sum_reduction_for_comms"):
                # A plain SUM (gloo has no PREMUL_SUM); factor 1 leaves nothing to scale.
                module.set_force_sum_reduction_for_comms(True)
    return model


def _prepare_4bit_weights(model: torch.nn.Module) -> None:
    """QLoRA: make bitsandbytes' 4-bit layers shardable."""
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if type(weight).__name__ != "Params4bit":
            continue
        if weight.dtype == torch.uint8:
            # FSDP2 (torch 2.11) makes only floating-point parameters: store the packed bytes
            # as bfloat16 pairs, bitsandbytes' own `bnb_4bit_quant_storage=torch.bfloat16`.
            weight.data = weight.data.reshape(-1).view(torch.bfloat16).reshape(-1, 1)
            weight.quant_storage = module.quant_storage = torch.bfloat16
        # On CPU, bitsandbytes repacks a 4-bit weight in place at its first eval forward and
        # flags the shared quant state; FSDP's next gather brings back the unpacked bytes.
        module.support_avx512bf16_for_cpu = False


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks, by the class names transformers lists in `_no_split_modules`."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"found no decoder layers ({sorted(names)}) to shard in {type(model)}")
    return layers


# Sharded checkpoints.


def _state_dict_options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kwargs)


def _tensor_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int
) -> dict[str, Any]:
    """The trainable weights and, after the first step, the optimizer state (asking DCP for
    an empty optimizer's state would run a zero step that sets AdamW's step count)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    options = _state_dict_options(ignore_frozen_params=True)
    if step == 0:
        return {"model": get_model_state_dict(model, options=options)}
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    return {"model": model_state, "optimizer": optim_state}


def write_sharded_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainingState,
    ranks: Ranks,
) -> None:
    """Every rank writes its DCP shard of the trainable weights and AdamW state, and its RNG
    state, into the shared `folder`; then rank 0 adds scheduler.pt and state.json (last)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_tensor_state(model, optimizer, state.global_step), checkpoint_id=folder / SHARDS_DIR)
    (folder / RNG_DIR).mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), folder / RNG_DIR / f"rank-{ranks.rank:05d}.pt")
    ranks.barrier()
    if ranks.is_main:
        torch.save(scheduler.state_dict(), folder / "scheduler.pt")
        (folder / STATE_FILE).write_text(json.dumps(asdict(state), sort_keys=True) + "\n")


def read_sharded_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ranks: Ranks,
    step: int,
) -> None:
    """Every rank loads its shards, the scheduler and its RNG (`step`: the checkpoint's)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    loaded = _tensor_state(model, optimizer, step)  # the shapes and shards to fill in
    dcp.load(loaded, checkpoint_id=folder / SHARDS_DIR)
    options = _state_dict_options(ignore_frozen_params=True, strict=False)
    if "optimizer" in loaded:
        set_state_dict(
            model,
            optimizer,
            model_state_dict=loaded["model"],
            optim_state_dict=loaded["optimizer"],
            options=options,
        )
    else:
        set_model_state_dict(model, loaded["model"], options=options)
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(folder / RNG_DIR / f"rank-{ranks.rank:05d}.pt", weights_only=True))


def save_to_store(
    store: CheckpointStore,
    staging: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainingState,
    ranks: Ranks,
) -> str | None:
    """Write the sharded checkpoint of state.global_step under `staging` (a folder every
    rank sees: one node, or a shared volume) and let rank 0 publish it whole with
    store.save. Returns the store's id on rank 0, None elsewhere."""
    folder = staging / f"step-{state.global_step:08d}"
    if ranks.is_main:
        shutil.rmtree(folder, ignore_errors=True)  # a crashed attempt's leftovers
    ranks.barrier()
    write_sharded_checkpoint(folder, model, optimizer, scheduler, state, ranks)
    if not ranks.is_main:
        return None
    try:
        return store.save(state.global_step, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.rmdir()  # only when empty


@contextlib.contextmanager
def fetched_from_store(
    store: CheckpointStore, step: int, staging: Path, ranks: Ranks
) -> Iterator[Path]:
    """The checkpoint of `step`, copied from the store by rank 0 into the shared `staging`
    folder, visible to every rank inside the block; removed after."""
    folder = staging / f"resume-{step:08d}"
    if ranks.is_main:
        shutil.rmtree(folder, ignore_errors=True)
        store.load(step, folder)
    ranks.barrier()
    try:
        yield folder
    finally:
        ranks.barrier()
        if ranks.is_main:
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                staging.rmdir()


def save_artifact(spec: MethodSpec, model: torch.nn.Module, dest: Path, ranks: Ranks) -> None:
    """spec.save on rank 0 with the full, unsharded tensors (gathered to CPU), so the artifact
    is exactly what one process writes. Every rank must call it (the gather is collective).
    Adapters gather only the trained tensors; a full model gathers everything."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    options = _state_dict_options(
        full_state_dict=True,
        cpu_offload=True,
        ignore_frozen_params=spec.artifact_kind != "full",
    )
    full = get_model_state_dict(model, options=options)  # empty on ranks other than 0
    if ranks.is_main:
        # Methods save through save_pretrained, which reads model.state_dict() (transformers
        # and PEFT alike); for this call it returns the gathered tensors.
        model.state_dict = lambda *args, **kwargs: dict(full)  # type: ignore[method-assign]
        try:
            spec.save(model, dest)
        finally:
            del model.state_dict
    ranks.barrier()


# The torchrun launcher the trainer worker uses.


def torchrun_command(
    config_file: str | Path,
    train: str | Path,
    eval_rows: str | Path | None,
    out: str | Path,
    *,
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int = 29500,
    overrides: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """`python -m torch.distributed.run ... -m posttrain.training CONFIG --train ... --out ...`.

    One node: --standalone (a free local rendezvous). Several nodes: every node runs the
    same command with its own node_rank and the address of node 0 (static rendezvous),
    and a folder all nodes share for sharded checkpoints (launch's `staging`)."""
    if nproc_per_node < 1 or nnodes < 1:
        raise ValueError(f"nproc_per_node and nnodes must be >= 1: {nproc_per_node}, {nnodes}")
    command = [python, "-m", "torch.distributed.run"]
    if nnodes == 1:
        command.append("--standalone")
    else:
        if not master_addr:
            raise ValueError("several nodes need master_addr (the address of node_rank 0)")
        command += [
            f"--nnodes={nnodes}",
            f"--node_rank={node_rank}",
            f"--master_addr={master_addr}",
            f"--master_port={master_port}",
        ]
    command += [f"--nproc_per_node={nproc_per_node}", "-m", "posttrain.training"]
    command += [str(config_file), "--train", str(train), "--out", str(out)]
    if eval_rows is not None:
        command += ["--eval", str(eval_rows)]
    return command + [*extra_args, *overrides]


@dataclass
class LaunchResult:
    status: str  # "completed" | "cancelled" (from the report, or stopped) | "failed"
    # | "ended": a node other than 0 whose ranks exited cleanly (it has no report)
    returncode: int  # torchrun's
    report_path: Path  # training_report.json (written by rank 0 when not failed)
    command: list[str]


def launch(
    config: TrainingJobConfig,
    train: str | Path,
    eval_rows: str | Path | None,
    out: str | Path,
    *,
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int = 29500,
    checkpoint_store: str | None = None,
    staging: Path | None = None,
    progress: Callable[[Any], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    cancel_grace_s: float | None = None,
    env: dict[str, str] | None = None,
    output: Path | None = None,
    poll_s: float = 0.5,
) -> LaunchResult:
    """Run the SFT recipe under torchrun on this node and wait for it.

    The config is written to OUT/job.yaml. `progress` receives the ProgressEvent of every
    step (rank 0 appends them to OUT/progress.jsonl); when `should_cancel()` turns True,
    OUT/CANCEL is created and rank 0 stops every rank at the next step boundary with a
    checkpoint (status "cancelled"); if that takes more than `cancel_grace_s`, torchrun and
    its ranks are terminated: "cancelled" too, with no new checkpoint. An exception out of
    `progress` or `should_cancel` terminates them as well, then propagates. `checkpoint_store` is "module:factory", called as
    factory(out) in each process to build the CheckpointStore (default:
    LocalCheckpointStore(OUT/checkpoints)). `staging`: where sharded checkpoints are
    written, a folder every rank of every node sees (default OUT/checkpoint-staging). On
    nodes other than 0 nothing is reported: `progress` and the report are rank 0's, and a
    cancel reaches rank 0 through node 0's OUT/CANCEL. torchrun's stdout and stderr (every rank's)
    are appended to `output` if given, else go to this process's."""
    from posttrain.training.engine import ProgressEvent

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / "job.yaml"
    config_file.write_text(config.to_yaml())
    progress_file, cancel_file = out / "progress.jsonl", out / "CANCEL"
    progress_file.unlink(missing_ok=True)
    cancel_file.unlink(missing_ok=True)
    extra = ["--progress-file", str(progress_file), "--cancel-file", str(cancel_file)]
    if checkpoint_store:
        extra += ["--checkpoint-store", checkpoint_store]
    if staging is not None:
        extra += ["--checkpoint-staging", str(staging)]
    command = torchrun_command(
        config_file,
        train,
        eval_rows,
        out,
        nproc_per_node=nproc_per_node,
        nnodes=nnodes,
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=master_port,
        extra_args=extra,
    )
    seen, cancelled_at, stopped = 0, None, False
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(open(output, "ab")) if output is not None else None
        process = stack.enter_context(
            subprocess.Popen(
                command, env=env, stdout=sink, stderr=subprocess.STDOUT if sink else None
            )
        )
        try:
            while True:
                finished = process.poll() is not None
                if progress is not None and progress_file.is_file():
                    # Only newline-terminated lines: the last one may be half-written.
                    complete = progress_file.read_text().split("\n")[:-1]
                    for line in complete[seen:]:
                        progress(ProgressEvent(**json.loads(line)))
                    seen = max(seen, len(complete))
                if finished:
                    break
                if should_cancel is not None and cancelled_at is None and should_cancel():
                    cancel_file.touch()
                    cancelled_at = time.monotonic()
                waited = time.monotonic() - cancelled_at if cancelled_at is not None else 0.0
                if cancel_grace_s is not None and waited > cancel_grace_s:
                    _stop_torchrun(process)
                    stopped = True
                    break
                time.sleep(poll_s)
        except BaseException:
            _stop_torchrun(process)
            raise
    report = out / "report" / "training_report.json"
    status = "cancelled" if stopped else "failed"
    if process.returncode == 0 and node_rank == 0:  # the report was (re)written by this run
        status = json.loads(report.read_text())["status"]
    elif process.returncode == 0:  # another node's: rank 0's report says how the run ended
        status = "ended"
    return LaunchResult(status, process.returncode, report, command)


def _stop_torchrun(process: subprocess.Popen, grace_s: float = 45.0) -> None:
    """SIGTERM to torchrun, which stops its ranks (each in a session of its own) and exits;
    SIGKILL to it, then to any rank left, after `grace_s` (torchrun's own is 30 s)."""
    import psutil

    try:
        ranks = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        ranks = []
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    _, left = psutil.wait_procs(ranks, timeout=5)
    for rank in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            rank.kill()
