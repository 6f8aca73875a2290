"""Issue 14's side-by-side: tokens/s, peak memory and MFU of posttrain's engine (run_training,
the code path of the training workers) against plain transformers + PEFT loops, on the same
random-weight model, the same batches and the same seed, in one process on one GPU.

    python benchmarks/bench_gpu_speed.py --arch llama-3.2-1b --configs lora-b8,lora-b4-gc,\\
        full-b8,qlora-b4-gc --steps 10 --match-config lora-b4-gc --match-steps 50 --ablate
    python benchmarks/bench_gpu_speed.py --arch llama-3.1-8b --configs qlora-b4-gc,lora-b4-gc \\
        --steps 6 --match-config lora-b4-gc --match-steps 10   # the 8B shape of bench_distributed

Every row is exactly --seq-len tokens (chat rows cut with truncate_left; about half of each
row is the assistant answer, the only tokens with labels), so neither loop pads. The plain
loop is what a user writes: from_pretrained (bf16 base; fp32 for full fine-tuning), `.train()`
BEFORE gradient checkpointing (non-reentrant), get_peft_model (LoRA r=16, alpha 32, no
dropout, all linear layers), bf16 autocast, the model's own loss, torch AdamW, clip 1.0, the
engine's warmup/cosine schedule. QLoRA baselines: NF4 double-quant with and without
peft.prepare_model_for_kbit_training. The engine gets the same method config and data.

Tokens/s: tokens of the steps after the first two (warm-up) over their summed time, each
step timed with a device synchronise. Peak: torch.cuda.max_memory_allocated from before the
model is built to the end of the run. Ratio: against the FASTER baseline variant of the
config. MFU: (6 N + 6 L d s) FLOP per token (N = matmul weights, LM head included; the
attention term is PaLM's halved for the causal mask; recomputation not counted) over
989 TFLOP/s (H100/H200 dense bf16 datasheet). The loss check compares the per-step loss of
the engine and of the faster baseline over the same steps: max |a - b| / |b|.

The engine's checkpoint and artifact writes (after the timed steps) are skipped: they cost
disk time, not training time. --ablate adds the engine with the full-logits loss
(engine.CHUNKED_LOSS = False), to show what the chunked LM-head loss buys.
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

PEAK_TFLOPS = 989.0
WORDS = (
    "red green blue amber river stone cloud maple cedar falcon otter harbor lantern meadow "
    "copper silver violet ember frost canyon willow pebble thistle walnut saffron cobalt"
).split()
LORA = {"rank": 16, "alpha": 32.0, "dropout": 0.0, "target_modules": "all-linear"}
# name: (method, batch size, gradient checkpointing)
CONFIGS: dict[str, tuple[str, int, bool]] = {
    "lora-b8": ("lora", 8, False),
    "lora-b4-gc": ("lora", 4, True),
    "full-b8": ("full", 8, False),
    "qlora-b4-gc": ("qlora", 4, True),
}


def chat_rows(count: int, seq_len: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        question = " ".join(rng.choice(WORDS) for _ in range(seq_len))
        answer = " ".join(rng.choice(WORDS) for _ in range(seq_len // 9))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": question},  # cut by the window
                    {"role": "assistant", "content": "Noted."},
                    {"role": "user", "content": "Now some more words."},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows


def exact_rows(tokenizer: Any, count: int, seq_len: int) -> list[dict]:
    """`count` chat rows that encode to exactly seq_len tokens under truncate_left."""
    from posttrain.data.chat_template import encode_rows

    kept: list[dict] = []
    seed = 0
    while len(kept) < count:
        candidates = chat_rows(count, seq_len, seed)
        for row in candidates:
            one, _ = encode_rows([row], tokenizer, max_seq_len=seq_len, truncation="truncate_left")
            if one and len(one[0]) == seq_len:
                kept.append(row)
        seed += 1
        if seed > 5 and not kept:
            raise RuntimeError(f"no chat row encodes to exactly {seq_len} tokens")
    return kept[:count]


def flops_per_token(config: Any, seq_len: int) -> float:
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = config.num_key_value_heads * head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * inter
    n = layers * per_layer + config.vocab_size * h
    return 6.0 * n + 6.0 * layers * q * seq_len


def _rate(tokens: list[int], times: list[float], warmup: int = 2) -> float:
    return sum(tokens[warmup:]) / sum(times[warmup:])


CUDA = torch.cuda.is_available()  # else a CPU smoke run of the script itself (tiny arch)
DEVICE = "cuda" if CUDA else "cpu"


def _free() -> None:
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def _peak() -> int:
    return torch.cuda.max_memory_allocated() if CUDA else 0


def plain_run(
    method: str, prepare: bool, base: Path, rows: list[dict], args: argparse.Namespace, batch: int,
    checkpointing: bool, steps: int,
) -> dict[str, Any]:  # fmt: skip
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from posttrain.data.chat_template import encode_rows
    from posttrain.training import load_tokenizer
    from posttrain.training.batching import collate, epoch_order, plan_epoch
    from posttrain.training.engine import lr_factor, seed_everything

    tokenizer = load_tokenizer(base)
    encoded, _ = encode_rows(rows, tokenizer, max_seq_len=args.seq_len, truncation="truncate_left")
    plan = plan_epoch(
        epoch_order(len(encoded), 0, 0), [len(r) for r in encoded], batch_size=batch,
        grad_accum=1, packing=False, max_seq_len=args.seq_len,
    )  # fmt: skip
    _free()
    seed_everything(0)
    if method == "full":
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(DEVICE)
    elif method == "qlora":
        quant = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(
            base,
            dtype=torch.bfloat16,
            device_map={"": 0} if CUDA else "cpu",
            quantization_config=quant,
        )
        if prepare:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).to(DEVICE)
    if method != "full":
        lora = LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
            task_type="CAUSAL_LM",
        )  # fmt: skip
        model = get_peft_model(model, lora)
    model.config.use_cache = False
    model.train()  # from_pretrained leaves eval mode, where checkpointing is skipped
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, 0, 0.0))
    losses, tokens, times = [], [], []
    for step in range(steps):
        batch_t = collate(encoded, plan[step][0], int(tokenizer.pad_token_id), packed=False)
        _sync()
        started = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=CUDA):
            loss = model(
                input_ids=batch_t["input_ids"].to(DEVICE),
                attention_mask=batch_t["attention_mask"].to(DEVICE),
                labels=batch_t["labels"].to(DEVICE),
            ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        _sync()
        times.append(time.perf_counter() - started)
        tokens.append(int(batch_t["attention_mask"].sum()))
    peak = _peak()
    del model, optimizer, scheduler, params
    _free()
    return {"tok_s": _rate(tokens, times), "peak": peak, "losses": losses}


def engine_run(
    method: str, method_config: dict, base: Path, rows: list[dict], args: argparse.Namespace,
    batch: int, checkpointing: bool, steps: int, chunked: bool, options: dict | None = None,
    only_kernels: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """`options`: TrainingJobConfig fields (fused_kernels, compile_layers); `only_kernels`:
    apply just these kernel units (the ablation of one lever at a time)."""
    from posttrain.training import TrainingJobConfig, engine, run_training
    from posttrain.training.kernels import KERNELS

    config = TrainingJobConfig(
        base_model=str(base), method=method, method_config=method_config, max_steps=steps,
        batch_size=batch, lr=args.lr, max_seq_len=args.seq_len, truncation="truncate_left",
        device=DEVICE, gradient_checkpointing=checkpointing, checkpoint_every=0,
        **(options or {}),
    )  # fmt: skip
    engine.CHUNKED_LOSS = chunked
    registered = dict(KERNELS)
    if only_kernels is not None:
        KERNELS.clear()
        KERNELS.update({k: registered[k] for k in only_kernels})
    _free()
    try:
        with tempfile.TemporaryDirectory() as out:
            result = run_training(config, rows, None, out)
    finally:
        engine.CHUNKED_LOSS = True
        KERNELS.clear()
        KERNELS.update(registered)
    peak = _peak()
    _free()
    history = result.history
    times = [h["tokens"] / h["tokens_per_second"] for h in history]
    return {
        "tok_s": _rate([h["tokens"] for h in history], times),
        "peak": peak,
        "losses": [h["loss"] for h in history],
    }


def _skip_disk_writes() -> None:
    """The engine's end-of-run checkpoint and artifact (disk time, after the timed steps)."""
    from posttrain.training import engine

    engine.write_checkpoint = lambda folder, *a, **k: Path(folder).mkdir(parents=True)
    engine._save_artifacts = lambda *a, **k: {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--arch", default="llama-3.2-1b", help="a key of ARCHITECTURES, or llama-3.1-8b"
    )
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--match-config", default="lora-b4-gc")
    parser.add_argument("--match-steps", type=int, default=50)
    parser.add_argument(
        "--ablate", action="store_true", help="also the engine without kernels, full logits"
    )
    parser.add_argument(
        "--ablate-kernels", default="", help="configs where each kernel alone and compile run"
    )
    args = parser.parse_args()

    import peft
    import transformers
    from transformers import AutoConfig

    from posttrain.training import load_tokenizer, make_tiny_model

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}"
    try:
        import bitsandbytes

        versions += f", bitsandbytes {bitsandbytes.__version__}"
    except ImportError:
        pass
    if args.arch == "llama-3.1-8b":  # registered by bench_distributed.py (same folder)
        import bench_distributed  # noqa: F401
    print(f"# {torch.cuda.get_device_name() if CUDA else 'cpu'} | {versions}", flush=True)
    _skip_disk_writes()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        # the 8B shape's random init on the GPU: seconds instead of minutes on the CPU (other
        # shapes keep their CPU init, so their weights match earlier runs)
        init = DEVICE if args.arch == "llama-3.1-8b" else "cpu"
        with torch.device(init):
            base = make_tiny_model(Path(tmp) / args.arch, arch=args.arch, vocab_size=None,
                                   dtype=torch.bfloat16, tokenizer="bytelevel")  # fmt: skip
        _free()
        print(f"# model {args.arch} ready in {time.perf_counter() - started:.0f}s", flush=True)
        per_token = flops_per_token(AutoConfig.from_pretrained(base), args.seq_len)
        tokenizer = load_tokenizer(base)
        header = f"{'config':12s} {'loop':26s} {'tok/s':>9s} {'peak GiB':>9s} {'ratio':>6s} {'mem':>5s} {'MFU':>6s}  loss vs baseline"
        print(header, flush=True)
        for name in args.configs.split(","):
            method, batch, checkpointing = CONFIGS[name]
            steps = args.match_steps if name == args.match_config else args.steps
            rows = exact_rows(tokenizer, steps * batch, args.seq_len)
            results: dict[str, dict[str, Any]] = {}
            plain_variants = [("plain+prepare_kbit", True), ("plain", False)]
            for label, prepare in plain_variants if method == "qlora" else [("plain", False)]:
                results[label] = plain_run(
                    method, prepare, base, rows, args, batch, checkpointing, steps
                )
            method_config = {} if method == "full" else dict(LORA)
            # label: (method config, chunked loss, TrainingJobConfig options, kernels applied)
            engines: list[tuple[str, dict, bool, dict, list[str] | None]] = [
                ("engine", method_config, True, {}, None)
            ]
            if method == "qlora":
                engines.append(
                    ("engine prepare_kbit", {**LORA, "prepare_kbit_training": True}, True, {}, None)
                )
            if args.ablate:
                off = {"fused_kernels": "off"}
                engines.append(("engine no-kernels", method_config, True, off, None))
                engines.append(("engine no-kern full-logit", method_config, False, off, None))
            if name in args.ablate_kernels.split(","):
                from posttrain.training.kernels import KERNELS

                for kernel in KERNELS:
                    engines.append((f"engine only {kernel}", method_config, True, {}, [kernel]))
                compiled = {"compile_layers": True}
                engines.append(("engine +compile", method_config, True, compiled, None))
                off_compiled = {"compile_layers": True, "fused_kernels": "off"}
                engines.append(("engine no-kern +compile", method_config, True, off_compiled, None))
            for label, mc, chunked, options, only in engines:
                try:
                    results[label] = engine_run(
                        method, mc, base, rows, args, batch, checkpointing, steps, chunked,
                        options, only,
                    )  # fmt: skip
                except Exception as error:  # one failed variant must not lose the others
                    print(f"{name:12s} {label:26s} FAILED: {type(error).__name__}: {error}")
                    _free()
            best = max(
                (r for k, r in results.items() if k.startswith("plain")), key=lambda r: r["tok_s"]
            )
            for label, r in results.items():
                diffs = [
                    abs(a - b) / abs(b) for a, b in zip(r["losses"], best["losses"], strict=True)
                ]
                mfu = r["tok_s"] * per_token / (PEAK_TFLOPS * 1e12)
                print(
                    f"{name:12s} {label:26s} {r['tok_s']:9.0f} {r['peak'] / 2**30:9.1f} "
                    f"{r['tok_s'] / best['tok_s']:6.2f} {r['peak'] / max(best['peak'], 1):5.2f} "
                    f"{mfu:6.1%}  max rel diff {max(diffs):.2e} over {steps} steps "
                    f"(first {r['losses'][0]:.4f}, last {r['losses'][-1]:.4f})",
                    flush=True,
                )
            if not all(math.isfinite(x) for r in results.values() for x in r["losses"]):
                print(f"{name}: NON-FINITE LOSS", flush=True)


if __name__ == "__main__":
    main()
