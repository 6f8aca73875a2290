"""Training throughput and peak memory per tuning method: posttrain's engine against a plain
transformers + PEFT loop on the same model, the same tokens and the same batch size.

    python benchmarks/bench_training.py [--model tiny|smollm2] [--methods lora,qlora]
        [--steps 10] [--batch-size 4] [--seq-len 64] [--threads 1] [--repeat 2]
    python benchmarks/bench_training.py --device cuda --arch llama-3.2-1b --seq-len 1024 \\
        --batch-size 8        # GPU machine: random-weight Llama-3.2-1B shape, bf16 autocast

Each (method, loop) runs in its own subprocess so that peak memory is that run's alone
(CPU: the process's ru_maxrss; GPU: torch.cuda.max_memory_allocated). Tokens/s is the
best step's real (non-padding) tokens / step time, over the steps after the first
(warm-up), best of --repeat runs with engine and plain interleaved: on a shared
machine the best step is the one least slowed by other people's work (timeit's rule). Prints one line per method with the engine/plain throughput ratio. The plain
loop builds its model with transformers/peft directly, pads every batch to its longest
row and uses the model's own loss; it has no eval, checkpoints or progress callbacks.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

WORDS = (
    "red green blue amber river stone cloud maple cedar falcon otter harbor lantern meadow "
    "copper silver violet ember frost canyon willow pebble thistle walnut saffron cobalt"
).split()
ALL_METHODS = ("full", "lora", "qlora", "ia3", "prefix", "prompt")
METHOD_CONFIGS = {
    "full": {},
    "lora": {"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
    "qlora": {"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
    "ia3": {},
    "prefix": {"num_virtual_tokens": 16},
    "prompt": {"num_virtual_tokens": 16},
}


def synthetic_rows(count: int, seq_len: int, seed: int = 0) -> list[dict]:
    """Chat rows of roughly seq_len tokens: a prompt and an answer of random words."""
    rng = random.Random(seed)
    words = max(4, seq_len // 3)
    rows = []
    for _ in range(count):
        question = " ".join(rng.choice(WORDS) for _ in range(words // 2))
        answer = " ".join(rng.choice(WORDS) for _ in range(words - words // 2))
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "Echo."},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows


def prepare_model(args: argparse.Namespace, workdir: Path) -> Path:
    from posttrain.training import export_smollm2_instruct, make_tiny_model

    if args.arch:
        dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
        return make_tiny_model(workdir / args.arch, arch=args.arch, vocab_size=None, dtype=dtype)
    if args.model == "smollm2":
        return export_smollm2_instruct()
    return make_tiny_model(workdir / "tiny", seed=0)


def _peak_bytes(device: str) -> int:
    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_engine(args: argparse.Namespace, base: Path, rows: list[dict]) -> dict:
    from posttrain.training import TrainingJobConfig, run_training

    config = TrainingJobConfig(
        base_model=str(base),
        method=args.method,
        method_config=METHOD_CONFIGS[args.method],
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=1e-4,
        max_seq_len=args.seq_len * 4,
        device=args.device,
        gradient_checkpointing=args.gradient_checkpointing and args.method != "prefix",
    )
    with tempfile.TemporaryDirectory() as out:
        result = run_training(config, rows, None, out)
    return {
        "tokens_per_s": max(h["tokens_per_second"] for h in result.history[1:]),
        "peak_bytes": _peak_bytes(args.device),
        "trainable": result.trainable_params,
        "loss": result.history[-1]["loss"],
    }


def plain_model(method: str, base: Path, device: str):
    """The model as a user would build it with transformers + peft directly."""
    from peft import (
        IA3Config,
        LoraConfig,
        PrefixTuningConfig,
        PromptTuningConfig,
        get_peft_model,
        prepare_model_for_kbit_training,
    )
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    frozen = torch.bfloat16 if device == "cuda" else torch.float32
    if method == "full":
        return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device)
    if method == "qlora":
        model = AutoModelForCausalLM.from_pretrained(
            base,
            dtype=frozen,
            device_map={"": 0} if device == "cuda" else "cpu",
            quantization_config=BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=frozen,
            ),
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=frozen).to(device)
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    peft_config = {
        "lora": lora,
        "qlora": lora,
        "ia3": IA3Config(task_type="CAUSAL_LM"),
        "prefix": PrefixTuningConfig(num_virtual_tokens=16, task_type="CAUSAL_LM"),
        "prompt": PromptTuningConfig(num_virtual_tokens=16, task_type="CAUSAL_LM"),
    }[method]
    return get_peft_model(model, peft_config)


def run_plain(args: argparse.Namespace, base: Path, rows: list[dict]) -> dict:
    from posttrain.data.chat_template import encode_rows
    from posttrain.training import load_tokenizer

    torch.manual_seed(0)
    tokenizer = load_tokenizer(base)
    encoded, _ = encode_rows(rows, tokenizer, max_seq_len=args.seq_len * 4)
    model = plain_model(args.method, base, args.device)
    model.train()
    if args.gradient_checkpointing and args.method != "prefix":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device == "cuda")
    rates = []
    for step in range(args.steps):
        batch_rows = encoded[step * args.batch_size : (step + 1) * args.batch_size]
        width = max(len(r) for r in batch_rows)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([r.input_ids + [pad] * (width - len(r)) for r in batch_rows])
        labels = torch.tensor([r.labels + [-100] * (width - len(r)) for r in batch_rows])
        mask = (
            torch.arange(width)[None, :] < torch.tensor([len(r) for r in batch_rows])[:, None]
        ).long()
        if args.device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with autocast:
            loss = model(
                input_ids=ids.to(args.device),
                attention_mask=mask.to(args.device),
                labels=labels.to(args.device),
            ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        if step > 0:  # the first step is warm-up
            rates.append(int(mask.sum()) / (time.perf_counter() - started))
    return {
        "tokens_per_s": max(rates),
        "peak_bytes": _peak_bytes(args.device),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "loss": float(loss),
    }


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    base = Path(args.base)
    rows = synthetic_rows(args.steps * args.batch_size, args.seq_len)
    result = (run_engine if args.loop == "engine" else run_plain)(args, base, rows)
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument(
        "--arch", default=None, help="random-weight architecture, e.g. llama-3.2-1b"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps (first is warm-up)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64, help="approximate tokens per row")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 keeps CPU numbers stable on a machine shared with others "
        "(with 2, OpenMP barriers stall whenever another process takes a core)",
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs per loop, best kept")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    # Internal: one measurement in a fresh process.
    parser.add_argument("--loop", choices=("engine", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop:
        worker(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        base = prepare_model(args, Path(tmp))
        label = args.arch or args.model
        print(
            f"# {label} on {args.device}: {args.steps} steps x batch {args.batch_size} x "
            f"~{args.seq_len} tokens, {args.threads} threads, "
            f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}"
        )
        for method in args.methods.split(","):
            if method == "qlora" and not _has_bitsandbytes():
                print(f"{method:7s} skipped: bitsandbytes is not installed")
                continue
            runs: dict[str, list[dict]] = {"engine": [], "plain": []}
            for _ in range(args.repeat):
                for loop in ("engine", "plain"):
                    measured = _measure(args, base, method, loop)
                    if measured is not None:
                        runs[loop].append(measured)
            engine = max(runs["engine"], key=lambda r: r["tokens_per_s"], default=None)
            plain = max(runs["plain"], key=lambda r: r["tokens_per_s"], default=None)
            if engine is None or plain is None:
                print(f"{method:7s} failed (see stderr above)")
                continue
            print(
                f"{method:7s} engine {engine['tokens_per_s']:9.1f} tok/s "
                f"peak {engine['peak_bytes'] / 2**20:8.0f} MiB | "
                f"plain {plain['tokens_per_s']:9.1f} tok/s "
                f"peak {plain['peak_bytes'] / 2**20:8.0f} MiB | "
                f"ratio {engine['tokens_per_s'] / plain['tokens_per_s']:.2f} | "
                f"trainable {engine['trainable']:,}"
            )


def _has_bitsandbytes() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def _measure(args: argparse.Namespace, base: Path, method: str, loop: str) -> dict | None:
    command = [
        sys.executable,
        __file__,
        f"--loop={loop}",
        f"--method={method}",
        f"--base={base}",
        f"--device={args.device}",
        f"--steps={args.steps}",
        f"--batch-size={args.batch_size}",
        f"--seq-len={args.seq_len}",
        f"--threads={args.threads}",
    ]
    if args.gradient_checkpointing:
        command.append("--gradient-checkpointing")
    done = subprocess.run(command, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    sys.stderr.write(done.stderr[-3000:])
    return None


if __name__ == "__main__":
    main()
