"""Multi-GPU SFT through the engine's distributed path (torchrun + FSDP2): tokens/s per GPU,
peak memory per GPU and scaling efficiency against the same code on one process, plus the
time to save and to resume a sharded checkpoint.

    python benchmarks/bench_distributed.py                 # every GPU here, 1 and N processes
    python benchmarks/bench_distributed.py --nproc 1       # a 1-GPU machine
    python benchmarks/bench_distributed.py --device cpu --cases tiny-full,tiny-lora --nproc 2 \\
        --steps 3 --seq-len 128                            # the orchestration on CPU (gloo)

Models are random-weight Llama shapes built here (posttrain.training.models.make_tiny_model
with the fallback byte-level tokenizer; the 8B shape is registered below), in bf16, on the
GPU (seconds instead of minutes on CPU), cached in --workdir. Rows are synthetic chat rows
of ~0.9 x --seq-len tokens. Every (case, processes) is its own torchrun launch of this file
(`--worker`), which calls run_training exactly as the recipe does; batch_size rows per GPU
(weak scaling: N processes train a global batch N times larger). Each run takes --steps + 1
steps and is cancelled after --steps, so it ends with a sharded checkpoint and no artifact.

Reported: tok/s per GPU = the median over the steps after the first of (global real tokens /
step time) / processes; peak = the largest rank's torch.cuda.max_memory_allocated;
scaling = tok/s per GPU with N processes / with 1. Checkpoint (--checkpoint-case): save = the
sharded write of every rank (DCP: weights + AdamW state) and its publication, timed on rank 0
when the run is cancelled; resume = new processes loading it (a second launch, cancelled
before its first step). The bench's store publishes by rename and loads by hard links, so
these are the sharded write/read alone; an S3 store adds its upload/download.

Sets NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and NVSHMEM_DISABLE_NVLS=1
unless already set (NVLink multicast stays off on shared hosts).
"""

from __future__ import annotations

import os

for _key, _value in {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}.items():
    os.environ.setdefault(_key, _value)

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from posttrain.training.checkpoint import LocalCheckpointStore  # noqa: E402
from posttrain.training.models import ARCHITECTURES  # noqa: E402

ARCHITECTURES.setdefault(
    "llama-3.1-8b",
    dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        vocab_size=128256,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=False,
        head_dim=128,
    ),
)

LORA = {"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
ARCH = {"tiny": "tiny", "1b": "llama-3.2-1b", "8b": "llama-3.1-8b"}
# case -> (arch key, method, method config, gradient checkpointing)
CASES = {
    f"{size}-{method}": (size, method, {} if method == "full" else LORA, size == "8b")
    for size in ARCH
    for method in ("full", "lora", "qlora")
}
DEFAULT_CASES = "1b-full,1b-lora,8b-lora,8b-qlora"
WORDS = (
    "red green blue amber river stone cloud maple cedar falcon otter harbor lantern meadow "
    "copper silver violet ember frost canyon willow pebble thistle walnut saffron cobalt"
).split()


class RenameStore(LocalCheckpointStore):
    """Publishes by rename, loads by hard links: the bench times the sharded write/read."""

    def save(self, step: int, source: Path) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self._dir(step)
        shutil.rmtree(final, ignore_errors=True)
        source.rename(final)
        for old in self.steps()[: -(self.keep_last or 1)]:
            shutil.rmtree(self._dir(old), ignore_errors=True)
        return str(final)

    def load(self, step: int, dest: Path) -> Path:
        shutil.copytree(self._dir(step), dest, copy_function=os.link, dirs_exist_ok=True)
        return dest


def build_model(arch: str, workdir: Path, device: str) -> Path:
    from posttrain.training.models import make_tiny_model

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):  # random init on the GPU: seconds for 8B
        path = make_tiny_model(
            workdir / f"{arch}-{str(dtype).removeprefix('torch.')}",
            arch=arch,
            vocab_size=None if arch != "tiny" else 1024,
            dtype=dtype,
            tokenizer="bytelevel",
        )
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return path


def write_rows(base: Path, count: int, seq_len: int, dest: Path) -> Path:
    """Chat rows of ~0.9 x seq_len tokens (measured with the model's chat template)."""
    import random

    from posttrain.data.chat_template import encode_chat
    from posttrain.training.models import load_tokenizer

    tokenizer = load_tokenizer(base)
    rng = random.Random(0)

    def row(words: int) -> dict:
        text = [rng.choice(WORDS) for _ in range(words)]
        return {
            "messages": [
                {"role": "system", "content": "Echo."},
                {"role": "user", "content": " ".join(text[: words // 2])},
                {"role": "assistant", "content": " ".join(text[words // 2 :])},
            ]
        }

    probe = 200
    tokens = len(encode_chat(row(probe)["messages"], tokenizer).input_ids)
    words = max(8, int(probe * 0.9 * seq_len / tokens))
    dest.write_text("".join(json.dumps(row(words)) + "\n" for _ in range(count)))
    return dest


def worker(args: argparse.Namespace) -> None:
    """One rank of one (case, processes) run: run_training as the recipe calls it."""
    import posttrain.training.engine as engine
    from posttrain.training import TrainingJobConfig, run_training

    torch.set_num_threads(1 if args.device == "cpu" else 4)
    timings: dict[str, list[float]] = {"save_s": [], "resume_s": []}

    def timed(function, into):  # noqa: ANN001, ANN202
        def call(*a, **k):  # noqa: ANN002, ANN003, ANN202
            started = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                into.append(time.perf_counter() - started)

        return call

    engine.save_to_store = timed(engine.save_to_store, timings["save_s"])
    engine._resume = timed(engine._resume, timings["resume_s"])
    _, method, method_config, checkpointing = CASES[args.case]
    config = TrainingJobConfig(
        base_model=args.base,
        method=method,
        method_config=method_config,
        max_steps=args.steps + 1,
        batch_size=args.batch_size,
        lr=1e-5,
        max_seq_len=args.seq_len,
        device=args.device,
        gradient_checkpointing=checkpointing,
    )
    events: list = []
    steps = 0 if args.resume_only else args.steps
    result = run_training(
        config,
        args.rows,
        None,
        args.out,
        RenameStore(Path(args.out) / "checkpoints", keep_last=1),
        progress=events.append,
        should_cancel=lambda: len(events) >= steps,
    )
    if os.environ.get("RANK", "0") == "0":
        rates = [h["tokens_per_second"] for h in result.history[1:]] or [0.0]
        summary = {
            "tokens_per_s": statistics.median(rates),
            "tokens_per_step": result.history[-1]["tokens"] if result.history else 0,
            "peak_bytes": result.peak_memory_bytes,
            "loss": result.history[-1]["loss"] if result.history else None,
            "trainable": result.trainable_params,
            **{k: v[-1] if v else None for k, v in timings.items()},
        }
        Path(args.result).write_text(json.dumps(summary))


def launch_case(args: argparse.Namespace, case: str, nproc: int, base: Path, rows: Path,
                out: Path, resume_only: bool = False) -> dict | None:  # fmt: skip
    result_file = out.with_suffix(".resume.json" if resume_only else ".json")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", __file__, "--worker", f"--case={case}", f"--base={base}",
        f"--rows={rows}", f"--out={out}", f"--result={result_file}", f"--device={args.device}",
        f"--steps={args.steps}", f"--batch-size={args.batch_size}", f"--seq-len={args.seq_len}",
    ]  # fmt: skip
    if resume_only:
        command.append("--resume-only")
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.case_timeout)
    except subprocess.TimeoutExpired:
        print(f"# {case} x{nproc}: timed out after {args.case_timeout}s", flush=True)
        return None
    if done.returncode not in (0, 3) or not result_file.is_file():  # 3: cancelled, expected
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-6000:])
        print(f"# {case} x{nproc}: failed (exit {done.returncode}, stderr above)", flush=True)
        return None
    measured = json.loads(result_file.read_text())
    measured["wall_s"] = time.perf_counter() - started
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument(
        "--nproc", type=int, default=None, help="processes (GPUs) to scale to; default: all GPUs"
    )
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"from {sorted(CASES)}")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (the first is warm-up)")
    parser.add_argument("--batch-size", type=int, default=4, help="rows per GPU per step")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument(
        "--checkpoint-case",
        default="1b-full",
        help="case whose checkpoint resume is timed ('' none)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/posttrain-bench-distributed"))
    parser.add_argument("--case-timeout", type=int, default=300, help="seconds per launch")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    # Internal: one rank of one run.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("case", "base", "rows", "out", "result"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    parser.add_argument("--resume-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    started = time.perf_counter()
    nproc = args.nproc or (torch.cuda.device_count() if args.device == "cuda" else 2)
    counts = sorted({1, nproc})
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {sorted(CASES)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"# torch {torch.__version__}, {args.device} x{nproc}, per GPU: batch {args.batch_size} x "
        f"~{int(args.seq_len * 0.9)} tokens, {args.steps} steps (first is warm-up)",
        flush=True,
    )
    results = []
    for case in cases:
        arch = ARCH[CASES[case][0]]
        t0 = time.perf_counter()
        base = build_model(arch, args.workdir / "models", args.device)
        rows = write_rows(
            base,
            (args.steps + 2) * args.batch_size * nproc,
            args.seq_len,
            args.workdir / "rows.jsonl",
        )
        print(f"# {case}: model {arch} ready in {time.perf_counter() - t0:.0f}s", flush=True)
        baseline = None
        for count in counts:
            out = args.workdir / "runs" / f"{case}-x{count}"
            shutil.rmtree(out, ignore_errors=True)
            measured = launch_case(args, case, count, base, rows, out)
            if measured is None:
                continue
            if case == args.checkpoint_case:
                resumed = launch_case(args, case, count, base, rows, out, resume_only=True)
                measured["resume_s"] = resumed["resume_s"] if resumed else None
            shutil.rmtree(out, ignore_errors=True)
            per_gpu = measured["tokens_per_s"] / count
            baseline = per_gpu if count == 1 else baseline
            measured |= {"case": case, "processes": count, "tokens_per_s_per_gpu": per_gpu}
            measured["scaling"] = per_gpu / baseline if baseline else None
            results.append(measured)
            print(_line(measured), flush=True)
    print(f"# total {time.perf_counter() - started:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _line(m: dict) -> str:
    scaling = f"{m['scaling']:.2f}" if m["scaling"] else "  - "
    checkpoint = ""
    if m.get("save_s") is not None:
        checkpoint = f" | ckpt save {m['save_s']:6.1f}s"
        if m.get("resume_s") is not None:
            checkpoint += f" resume {m['resume_s']:6.1f}s"
    return (
        f"{m['case']:9s} x{m['processes']} | {m['tokens_per_s_per_gpu']:9.0f} tok/s/GPU | "
        f"peak {m['peak_bytes'] / 2**30:6.1f} GiB/GPU | scaling {scaling} | "
        f"{m['tokens_per_step']} tok/step | loss {m['loss']:.3f}{checkpoint} | "
        f"wall {m['wall_s']:.0f}s"
    )


if __name__ == "__main__":
    main()
